"""The study (score -> prune -> evaluate -> recover -> measure -> report over a grid) and efficiency measurement."""
from prunescope.study.config import StudyConfig, load_study_config
from prunescope.study.efficiency import measure_efficiency
from prunescope.study.runner import run_study
from prunescope.study.stages import Stages

__all__ = ["Stages", "StudyConfig", "load_study_config", "measure_efficiency", "run_study"]
