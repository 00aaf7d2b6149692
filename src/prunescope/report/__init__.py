"""The study report: tables, figures and findings built from a run folder's artifact files only."""
from prunescope.report.build import build_report
from prunescope.report.tables import collect_results, write_results_csv

__all__ = ["build_report", "collect_results", "write_results_csv"]
