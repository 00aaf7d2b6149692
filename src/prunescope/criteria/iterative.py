"""Iterative criteria: remove one block at a time, each time the one whose removal hurts least.

Both run in memory with virtual removal (``skip_layers``) and, for the built-in objectives, the
shared fast path (``activations.skip_scan``). They stop after ``num_layers`` removals (default a
quarter of the layers). ``order`` is the greedy removal sequence followed by the remaining layers,
least harmful first, as judged in the last step; scores are rank-based (position ``i`` of the order
scores ``i / (L - 1)``), and ``config.steps`` records the objective after each removal.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from tqdm.auto import tqdm

from prunescope.criteria.activations import maybe_skip, mean_loss, skip_scan
from prunescope.criteria.base import CriterionResult, ScoringContext, rank_scores, register_criterion
from prunescope.criteria.calibration import context_limit, pack
from prunescope.errors import UsageError

DEFAULT_TASKS = ["arith_add_1d_gen", "brackets_gen"]
ITEMS_PER_TASK = 32
MAX_ITEM_TOKENS = 1024


def _steps(ctx: ScoringContext) -> int:
    return ctx.num_layers or max(1, ctx.total_layers // 4)


def greedy(ctx: ScoringContext, name: str, evaluate: Callable[[list[int], object], dict[int, float]],
           units_per_step: int = 1) -> CriterionResult:
    """Remove ``_steps(ctx)`` blocks greedily; ``evaluate(removed, bar)`` maps each remaining candidate
    to the objective (higher = better preserved) with that candidate also removed."""
    total, steps = ctx.total_layers, _steps(ctx)
    removed: list[int] = []
    history, values = [], {}
    work = sum(total - k for k in range(steps)) * units_per_step
    with tqdm(total=work, desc=name, disable=not ctx.progress, file=sys.stderr) as bar:
        for _ in range(steps):
            values = evaluate(removed, bar)
            best = max(values, key=lambda c: (values[c], -c))
            removed.append(best)
            history.append({"removed": best, "objective": values[best]})
    rest = sorted((c for c in values if c not in removed), key=lambda c: (-values[c], c))
    order = removed + rest
    return CriterionResult(scores=rank_scores(order), order=order, info={"removals": steps, "steps": history})


@register_criterion("sleb")
def sleb(ctx: ScoringContext) -> CriterionResult:
    """SLEB (Song et al. 2024): repeatedly remove the block whose removal increases the calibration loss
    least. The objective recorded per step is minus the calibration loss after that removal."""
    batches = ctx.calibration_batches()

    def evaluate(removed, bar):
        _, skipped = skip_scan(ctx.model, batches, removed=removed, fast=ctx.fast, progress=bar)
        return {c: -mean_loss(s) for c, s in skipped.items()}

    return greedy(ctx, "sleb", evaluate, units_per_step=len(batches))


@register_criterion("greedy_task")
def greedy_task(ctx: ScoringContext) -> CriterionResult:
    """The iterative ablation of Shrestha et al. (2026): repeatedly remove the block whose removal best
    preserves the baseline-normalised task score, averaged over tasks.

    With ``task_scorer`` (``fn(model) -> float``, higher = better) the score is ``fn(model) / fn(base)``
    and each candidate is evaluated by running the scorer on the virtually pruned model. Without it,
    each task (``tasks``, default arith_add_1d_gen and brackets_gen) contributes items from its
    ``calib`` split (disjoint from evaluation items); an item's score is its teacher-forced answer
    probability exp(mean log p(target token)) given the rendered prompt; a task's score is the mean
    over its items, divided by the unpruned model's."""
    if ctx.task_scorer is not None:
        return _greedy_with_scorer(ctx)
    tasks = ctx.tasks or DEFAULT_TASKS
    batches = _task_batches(ctx, tasks)
    groups = torch.cat([b.groups for b in batches])
    baseline: list[torch.Tensor] = []

    def objective(stats: torch.Tensor) -> float:
        item = torch.exp(stats[:, 0] / stats[:, 1].clamp(min=1)).double()
        per_task = torch.stack([item[groups == g].mean() for g in range(len(tasks))])
        if not baseline:
            baseline.append(per_task.clamp(min=1e-30))
        return float((per_task / baseline[0]).mean())

    def evaluate(removed, bar):
        base, skipped = skip_scan(ctx.model, batches, removed=removed, fast=ctx.fast, progress=bar)
        if not baseline:
            objective(base)
        return {c: objective(s) for c, s in skipped.items()}

    result = greedy(ctx, "greedy_task", evaluate, units_per_step=len(batches))
    result.info.update(tasks=tasks, items_per_task=ITEMS_PER_TASK, scorer="answer_probability",
                       baseline=[float(x) for x in baseline[0]])
    return result


def _greedy_with_scorer(ctx: ScoringContext) -> CriterionResult:
    base_score = float(ctx.task_scorer(ctx.model))
    scale = base_score if base_score > 0 else 1.0

    def evaluate(removed, bar):
        values = {}
        for c in (i for i in range(ctx.total_layers) if i not in removed):
            with maybe_skip(ctx.model, [*removed, c]):
                values[c] = float(ctx.task_scorer(ctx.model)) / scale
            bar.update(1)
        return values

    result = greedy(ctx, "greedy_task", evaluate)
    result.info.update(scorer=getattr(ctx.task_scorer, "__name__", "custom"), baseline=[base_score])
    return result


def _task_batches(ctx: ScoringContext, tasks: list[str]):
    """Calibration items of ``tasks`` as batches whose scored tokens are the answer tokens."""
    try:
        from prunescope.tasks import get_task
    except ImportError:
        raise UsageError("greedy_task needs the prunescope.tasks package for its default scorer; "
                         "pass task_scorer=fn(model) -> float instead") from None
    from prunescope.criteria.base import _input_device
    tok = ctx.tokenizer
    limit = context_limit(ctx.model, MAX_ITEM_TOKENS)
    rows = []
    for g, name in enumerate(tasks):
        task = get_task(name)
        chat = bool(task.use_chat_template and getattr(tok, "chat_template", None))
        for item in task.items(ITEMS_PER_TASK, seed=ctx.seed, split="calib"):
            context = tok(task.render(item, tok), add_special_tokens=not chat).input_ids
            target = tok(item.target, add_special_tokens=False).input_ids
            if not target:
                continue
            target = target[:limit - 1]
            context = context[-(limit - len(target)):]
            rows.append((context + target, [False] * len(context) + [True] * len(target), g))
    present = {g for *_, g in rows}
    if len(present) < len(tasks):
        missing = [t for g, t in enumerate(tasks) if g not in present]
        raise UsageError(f"greedy_task: no calibration items with a non-empty target for {', '.join(missing)}")
    ctx._calib_info = {"calib": "tasks", "calib_items": len(rows)}
    return pack(tok, rows, device=_input_device(ctx.model))
