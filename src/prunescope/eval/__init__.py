"""Evaluation: batched log-likelihood and generation (``engine``), metrics, and ``evaluate``."""
from prunescope.eval.engine import generate, loglikelihood, score_choices
from prunescope.eval.runner import evaluate, evaluate_task, format_table

__all__ = ["evaluate", "evaluate_task", "format_table", "generate", "loglikelihood", "score_choices"]
