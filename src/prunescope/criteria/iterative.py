"""Iterative criteria: remove one block at a time, each time the one whose removal hurts least.

Both run in memory with virtual removal (``skip_layers``) and, for the loss-based objectives, the
shared fast path: each candidate runs only the blocks after it (``activations``), and a candidate
before the previous step's winner starts from the state its own run kept there (``reuse.StepReuse``).
``fast=False`` is the naive loop (the whole model and the loss on full logits per candidate). They
stop after ``num_layers`` removals (default a quarter of the layers). ``order`` is the greedy removal
sequence followed by the remaining layers, least harmful first, as judged in the last step; scores
are rank-based (position ``i`` of the order scores ``i / (L - 1)``), and ``config.steps`` records
the objective after each removal.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from tqdm.auto import tqdm

from prunescope.criteria.activations import maybe_skip, mean_loss, skip_scan
from prunescope.criteria.base import CriterionResult, ScoringContext, rank_scores, register_criterion
from prunescope.criteria.calibration import context_limit, pack
from prunescope.criteria.reuse import StepReuse
from prunescope.errors import UsageError

DEFAULT_TASKS = ["arith_add_1d_gen", "brackets_gen"]
ITEMS_PER_TASK = 32
MAX_ITEM_TOKENS = 1024


def _steps(ctx: ScoringContext) -> int:
    return ctx.num_layers or max(1, ctx.total_layers // 4)


def greedy(ctx: ScoringContext, name: str, evaluate: Callable[[list[int], list[int], object], dict[int, float]],
           candidates: Callable[[list[int]], list[int]], *, later_wins_ties: bool,
           units_per_candidate: int = 1) -> CriterionResult:
    """Remove ``_steps(ctx)`` blocks greedily. ``candidates(removed)`` lists the blocks that may go next;
    ``evaluate(removed, candidates, bar)`` maps each to the objective (higher = better preserved) with
    that candidate also removed. Ties go to the later index when ``later_wins_ties``, else the earlier.
    The order ends with the last step's remaining candidates (best preserved first), then the blocks
    that were never candidates."""
    total, steps = ctx.total_layers, _steps(ctx)
    removed: list[int] = []
    history, values = [], {}
    sign = 1 if later_wins_ties else -1
    work = sum(len(candidates(list(range(k)))) for k in range(steps)) * units_per_candidate  # an estimate
    with tqdm(total=work, desc=name, disable=not ctx.progress, file=sys.stderr) as bar:
        for _ in range(steps):
            allowed = candidates(removed)
            if not allowed:
                raise UsageError(f"{name}: no block may be removed after {removed}; ask for fewer layers")
            values = evaluate(removed, allowed, bar)
            best = max(values, key=lambda c: (values[c], sign * c))
            removed.append(best)
            history.append({"removed": best, "objective": values[best]})
    rest = sorted((c for c in values if c not in removed), key=lambda c: (-values[c], -sign * c))
    never = [i for i in range(total) if i not in removed and i not in rest]
    order = removed + rest + never
    return CriterionResult(scores=rank_scores(order), order=order, info={"removals": steps, "steps": history})


def _alive(total: int, removed: list[int]) -> list[int]:
    return [i for i in range(total) if i not in set(removed)]


@register_criterion("sleb")
def sleb(ctx: ScoringContext) -> CriterionResult:
    """SLEB (Song et al. 2024; github.com/jiwonsong-dev/SLEB, ``sleb.py``): repeatedly remove the block
    whose removal increases the calibration loss least. As in the reference (``early_barrier =
    latter_barrier = 1``), the first and the last block still alive are never candidates, and a tie
    goes to the earlier block (``if loss < min_loss``). The objective recorded per step is minus the
    calibration loss (mean token NLL) after that removal."""
    batches = ctx.calibration_batches()
    total = ctx.total_layers

    def objective(stats):
        return -mean_loss(stats)

    def naive(removed, allowed, bar):
        _, skipped = skip_scan(ctx.model, batches, removed=removed, candidates=allowed, fast=False, progress=bar,
                               base=False)
        return {c: objective(s) for c, s in skipped.items()}

    evaluate = StepReuse(ctx.model, batches, objective, later_wins_ties=False) if ctx.fast else naive
    result = greedy(ctx, "sleb", evaluate, lambda removed: _alive(total, removed)[1:-1], later_wins_ties=False,
                    units_per_candidate=len(batches))
    result.info.update(barriers={"early": 1, "latter": 1})
    return result


@register_criterion("greedy_task")
def greedy_task(ctx: ScoringContext) -> CriterionResult:
    """The iterative ablation of Shrestha et al. (2026), seed paper ``layer_pruner/script.py``:
    repeatedly remove the block whose removal best preserves the task score, each task's score divided
    by the unpruned model's (0 when that is 0), averaged over tasks. Block 0 is never removed and a
    tie goes to the later block.

    The default objective (``greedy_objective="generate"``) is what the paper measures: accuracy of
    greedy generation (multiple-choice tasks: their log-likelihood accuracy) on ``ITEMS_PER_TASK``
    items of each task's ``calib`` split (disjoint from evaluation items); ``tasks`` default to
    arith_add_1d_gen and brackets_gen. ``greedy_objective="teacher_forced"`` is a fast proxy: an
    item's score is its answer's teacher-forced probability exp(mean log p(target token)).
    ``task_scorer`` (``fn(model) -> float``, higher = better) replaces the objective altogether."""
    total = ctx.total_layers
    candidates = lambda removed: [i for i in _alive(total, removed) if i != 0]  # noqa: E731
    if ctx.task_scorer is not None:
        return _greedy_with_scorer(ctx, candidates, lambda model: [float(ctx.task_scorer(model))],
                                   getattr(ctx.task_scorer, "__name__", "custom"), None)
    tasks = ctx.tasks or DEFAULT_TASKS
    if ctx.greedy_objective == "generate":
        return _greedy_with_scorer(ctx, candidates, _accuracy_scorer(ctx, tasks), "generation_accuracy", tasks)
    batches = _task_batches(ctx, tasks)
    groups = torch.cat([b.groups for b in batches])
    baseline: list[torch.Tensor] = []

    def per_task(stats: torch.Tensor) -> torch.Tensor:
        item = torch.exp(stats[:, 0] / stats[:, 1].clamp(min=1)).double()
        return torch.stack([item[groups == g].mean() for g in range(len(tasks))])

    def objective(stats):
        return _normalised(per_task(stats).tolist(), baseline[0].tolist())

    def naive(removed, allowed, bar):
        base, skipped = skip_scan(ctx.model, batches, removed=removed, candidates=allowed, fast=False, progress=bar,
                                  base=not baseline)
        if not baseline:
            baseline.append(per_task(base))
        return {c: objective(s) for c, s in skipped.items()}

    if ctx.fast:
        base, _ = skip_scan(ctx.model, batches, candidates=[])
        baseline.append(per_task(base))
        evaluate = StepReuse(ctx.model, batches, objective, later_wins_ties=True)
    else:
        evaluate = naive
    result = greedy(ctx, "greedy_task", evaluate, candidates, later_wins_ties=True, units_per_candidate=len(batches))
    result.info.update(tasks=tasks, items_per_task=ITEMS_PER_TASK, objective="teacher_forced",
                       scorer="answer_probability", baseline=[float(x) for x in baseline[0]])
    return result


def _normalised(scores: list[float], baseline: list[float]) -> float:
    """The seed paper's objective: mean over tasks of score / baseline score (0 where the baseline is 0)."""
    return sum(s / b if b > 0 else 0.0 for s, b in zip(scores, baseline)) / len(scores)


def _greedy_with_scorer(ctx: ScoringContext, candidates, scorer: Callable[[object], list[float]], name: str,
                        tasks: list[str] | None) -> CriterionResult:
    """Greedy removal where each candidate is judged by running ``scorer`` (per-task scores) on the
    virtually pruned model."""
    baseline = scorer(ctx.model)

    def evaluate(removed, allowed, bar):
        values = {}
        for c in allowed:
            with maybe_skip(ctx.model, [*removed, c]):
                values[c] = _normalised(scorer(ctx.model), baseline)
            bar.update(1)
        return values

    result = greedy(ctx, "greedy_task", evaluate, candidates, later_wins_ties=True)
    result.info.update(scorer=name, baseline=baseline,
                       objective="custom" if tasks is None else ctx.greedy_objective)
    if tasks is not None:
        result.info.update(tasks=tasks, items_per_task=ITEMS_PER_TASK)
    return result


def _accuracy_scorer(ctx: ScoringContext, tasks: list[str]) -> Callable[[object], list[float]]:
    """``fn(model) -> [accuracy per task]`` on each task's calibration items, scored the way
    ``prunescope eval`` scores them (greedy generation + the task's check; log-likelihood for
    multiple choice)."""
    from prunescope.eval.engine import resolve_batch_size
    from prunescope.eval.runner import HFBackend, _run_generate, _run_multiple_choice
    from prunescope.tasks import get_task
    batch_size = resolve_batch_size(ctx.model, "auto")  # once: every candidate runs the same items
    prepared = []
    for name in tasks:
        task = get_task(name)
        if task.evaluate_fn is not None:
            raise UsageError(f"greedy_task: {name} runs in another harness and has no calibration items; "
                             f"choose built-in tasks with --tasks")
        items = task.items(ITEMS_PER_TASK, seed=ctx.seed, split="calib")
        if not items:
            raise UsageError(f"greedy_task: {name} has no calibration items")
        prepared.append((task, items))
    # the items used, which is fewer than ITEMS_PER_TASK per task for a task with fewer calibration items
    ctx._calib_info = {"calib": "tasks", "calib_items": sum(len(items) for _, items in prepared)}

    def scorer(model) -> list[float]:
        out = []
        for task, items in prepared:
            run = _run_multiple_choice if task.kind == "multiple_choice" else _run_generate
            flags, _, _ = run(task, items, HFBackend(model, ctx.tokenizer), ctx.tokenizer, batch_size=batch_size,
                              chat=None, progress=False)
            out.append(sum(flags) / len(flags))
        return out
    return scorer


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
