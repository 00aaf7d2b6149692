"""The criterion registry, the ``score_layers`` entry point and the scores.json format.

A criterion is one decorated function ``fn(ctx) -> CriterionResult`` registered in ``CRITERIA``::

    @register_criterion("my_criterion")
    def my_criterion(ctx: ScoringContext) -> CriterionResult:
        return CriterionResult(scores=[...])          # one per layer, higher = more important

When ``order`` is omitted it is the layers sorted by ascending score (ties: lower index first).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from prunescope.errors import UsageError
from prunescope.io import read_json, write_json
from prunescope.registry import Registry


@dataclass
class CriterionResult:
    """What a criterion returns: one score per layer (higher = more important), optionally a removal
    order (least important first; the greedy removal order for iterative criteria) and extra config."""
    scores: list[float]
    order: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoringContext:
    """Everything a criterion may need. ``calibration_batches()`` builds the calibration set on first
    use, so criteria that ignore it (reverse, random) cost nothing.

    Named deviations from the references (each recorded in scores.json by the criteria it affects):
    ``plus_rule`` (taylor, ppl: keep the first 4 and last 2 blocks, Shortened LLaMA's "+" rule),
    ``angular_tokens`` ("last": the last non-padded token as in Gromov et al.; "all": every token),
    ``greedy_objective`` ("generate": accuracy of greedy generation as in the seed paper;
    "teacher_forced": the answer's teacher-forced probability, a fast proxy)."""
    model: Any
    tokenizer: Any
    calib: Any = None
    num_layers: int | None = None
    seed: int = 0
    max_calib_tokens: int | None = None
    calib_samples: int | None = None
    calib_seq_len: int | None = None
    tasks: list[str] | None = None
    task_scorer: Callable | None = None
    progress: bool = True
    fast: bool = True  # reuse activations before the skipped layer; False = the naive loop (for checks)
    plus_rule: bool = True
    angular_tokens: str = "last"
    greedy_objective: str = "generate"
    _batches: list | None = None
    _calib_info: dict | None = None

    @property
    def total_layers(self) -> int:
        from prunescope.models import num_layers
        return num_layers(self.model)

    def calibration_batches(self):
        """The calibration set as padded token batches (built once; see ``calibration.calibration_batches``)."""
        if self._batches is None:
            from prunescope.criteria.calibration import calibration_batches
            self._batches, self._calib_info = calibration_batches(
                self.model, self.tokenizer, self.calib, samples=self.calib_samples, seq_len=self.calib_seq_len,
                seed=self.seed, max_tokens=self.max_calib_tokens, device=_input_device(self.model))
        return self._batches


CRITERIA: Registry[Callable[[ScoringContext], CriterionResult]] = Registry("criterion")


def register_criterion(name: str):
    """Decorator: register ``fn(ctx: ScoringContext) -> CriterionResult`` as criterion ``name``."""
    return CRITERIA.register(name)


def _input_device(model) -> torch.device:
    from prunescope.models.architectures import get_architecture, get_submodule
    embed = get_submodule(model, get_architecture(model).embed or "")
    params = embed.parameters() if embed is not None else model.parameters()
    return next(iter(params)).device


def order_from_scores(scores: list[float]) -> list[int]:
    """Layers sorted by ascending importance (ties broken by lower index)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


PLUS_FIRST, PLUS_LAST = 4, 2  # Shortened LLaMA's "+" rule: these blocks are never pruned


def plus_rule_layers(total: int) -> list[int]:
    """The blocks Shortened LLaMA's "+" heuristic keeps (``src/block_prune.py``: ``keep_block_info``):
    the first 4 and the last 2."""
    return sorted({i for i in range(total) if i < PLUS_FIRST or i >= total - PLUS_LAST})


def protected_order(scores: list[float], protected: list[int]) -> list[int]:
    """Ascending-score order with the ``protected`` blocks moved to the end (they are cut only when a
    cut asks for more blocks than the others), each part sorted by score, ties to the lower index."""
    keep = set(protected)
    order = order_from_scores(scores)
    return [i for i in order if i not in keep] + [i for i in order if i in keep]


def rank_scores(order: list[int]) -> list[float]:
    """Scores from a removal order: the layer at position ``i`` of the order gets ``i / (L - 1)``, so the
    first removed scores 0 and the last-kept scores 1 (used by the order-only and iterative criteria)."""
    total = len(order)
    scores = [0.0] * total
    for pos, layer in enumerate(order):
        scores[layer] = pos / max(1, total - 1)
    return scores


def model_name(model) -> str:
    return str(getattr(model, "prunescope_source", None) or getattr(model.config, "_name_or_path", "") or "model")


def score_layers(model, tokenizer, criterion: str, *, calib=None, num_layers: int | None = None, seed: int = 0,
                 max_calib_tokens: int | None = None, calib_samples: int | None = None,
                 calib_seq_len: int | None = None, tasks: list[str] | None = None, task_scorer=None,
                 plus_rule: bool = True, angular_tokens: str = "last", greedy_objective: str = "generate",
                 progress: bool = True) -> dict:
    """Score every decoder block of ``model`` with ``criterion`` (see ``CRITERIA.names()``).

    ``calib``: None (the shipped public-domain corpus), ``wikitext-2``, a hub dataset id (``name`` or
    ``name:config``), a JSONL path (``{"text": ...}`` per line) or a list of strings; a corpus gives
    ``calib_samples`` (default 64) seeded random windows of ``calib_seq_len`` (default 512) tokens,
    ``max_calib_tokens`` caps the total (see ``criteria.calibration``). ``num_layers``: the block size ``n`` for
    ``angular`` (default 1) and the number of greedy removals for ``sleb`` / ``greedy_task`` (default a
    quarter of the layers); other criteria ignore it. ``tasks`` / ``task_scorer``: for ``greedy_task``.
    ``plus_rule``, ``angular_tokens``, ``greedy_objective``: named deviations from the references,
    see ``ScoringContext``.

    Returns the scores.json content: ``{model, criterion, num_layers, scores, order, config}`` where
    ``scores`` has one entry per layer (higher = more important) and ``order`` lists all layers, least
    important first. The model is left unchanged.
    """
    return compute_scores(model, tokenizer, criterion, calib=calib, num_layers=num_layers, seed=seed,
                          max_calib_tokens=max_calib_tokens, calib_samples=calib_samples, calib_seq_len=calib_seq_len,
                          tasks=tasks, task_scorer=task_scorer, plus_rule=plus_rule, angular_tokens=angular_tokens,
                          greedy_objective=greedy_objective, progress=progress)


def compute_scores(model, tokenizer, criterion: str, *, fast: bool = True, **kwargs) -> dict:
    """``score_layers`` with the choice of the fast (activation-reusing) or naive evaluation path."""
    fn = CRITERIA.get(criterion)
    ctx = ScoringContext(model=model, tokenizer=tokenizer, fast=fast, **kwargs)
    if ctx.angular_tokens not in ("last", "all"):
        raise UsageError(f"--angular-tokens {ctx.angular_tokens!r}: choose last (the paper) or all")
    if ctx.greedy_objective not in ("generate", "teacher_forced"):
        raise UsageError(f"--greedy-objective {ctx.greedy_objective!r}: choose generate (the paper) or "
                         f"teacher_forced (a fast proxy)")
    total = ctx.total_layers
    if num_layers := kwargs.get("num_layers"):
        if num_layers < 1 or num_layers >= total:
            raise UsageError(f"--num-layers {num_layers} must be between 1 and {total - 1} for a model with "
                             f"{total} layers")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        result = fn(ctx)
    finally:
        model.train(was_training)
    scores = [float(s) for s in result.scores]
    order = [int(i) for i in (result.order if result.order is not None else order_from_scores(scores))]
    config = {"seed": ctx.seed, "num_layers_arg": ctx.num_layers, "max_calib_tokens": ctx.max_calib_tokens,
              **(ctx._calib_info or {}), **result.info, "seconds": round(time.perf_counter() - start, 3)}
    out = {"model": model_name(model), "criterion": criterion, "num_layers": total, "scores": scores,
           "order": order, "config": config}
    _validate(out, "the criterion result")
    return out


def _validate(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not a scores file (expected a JSON object)")
    missing = [k for k in ("model", "criterion", "num_layers", "scores", "order") if k not in data]
    if missing:
        raise UsageError(f"{where} is not a scores file: missing {', '.join(missing)}; "
                         f"write one with `prunescope score`")
    total = data["num_layers"]
    scores, order = data["scores"], data["order"]
    if not isinstance(total, int) or total < 1:
        raise UsageError(f"{where}: num_layers must be a positive integer")
    if not isinstance(scores, list) or len(scores) != total or not all(
            isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise UsageError(f"{where}: scores must be {total} finite numbers")
    if not isinstance(order, list) or sorted(order) != list(range(total)):
        raise UsageError(f"{where}: order must list each of the {total} layers (0-based) once")
    return data


def save_scores(result: dict, path: str | os.PathLike):
    """Write a ``score_layers`` result to ``path`` as JSON, atomically."""
    _validate(result, "the scores")
    return write_json(path, result)


def load_scores(path: str | os.PathLike) -> dict:
    """Read and validate a scores.json written by ``save_scores`` (UsageError naming the file if broken)."""
    return _validate(read_json(path), str(path))
