"""``prunescope report RUN_DIR``: rebuild report.md, report.html and the figures from a run folder's files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunescope.config import field, require

HELP = "Rebuild a study's report (report.md, report.html, figures/) from the files in its run folder."


@dataclass
class Config:
    run_dir: str = field(help="the study's run folder (e.g. runs/default)", flag="run_dir")
    retention_target: float | None = field(None, help="retention the recommendation must keep (default: the "
                                                      "study config's report.retention_target, else 0.9)")

    def __post_init__(self) -> None:
        require(Path(self.run_dir).is_dir(), f"RUN_DIR {self.run_dir}: no such folder; pass a study's run folder "
                                             f"such as runs/default")
        require(self.retention_target is None or 0 < self.retention_target <= 1.5,
                f"--retention-target {self.retention_target} must be a fraction such as 0.9")


def run(config: Config) -> int:
    from prunescope.report import build_report

    paths = build_report(config.run_dir, retention_target=config.retention_target)
    print(f"report: {paths['markdown']}\n        {paths['html']}")
    return 0
