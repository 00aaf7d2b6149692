"""The stage functions a study calls, behind one small indirection, and the rules for scoring.

``Stages`` holds load_model / score_layers / evaluate / recover / RecoverConfig / measure_efficiency;
fields left None are the library's own functions, so tests can wrap any of them (e.g. to count
calls) without patching modules.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from prunescope.errors import UsageError
from prunescope.io import write_json

# Criteria whose removal set depends on how many layers go: angular picks the best contiguous block
# of exactly n layers, so it is scored once per count.
PER_COUNT = {"angular"}
# Greedy criteria remove one layer per step; the first k steps of a longer run are the run for k,
# so one run to the largest count serves every ratio.
ITERATIVE = {"sleb", "greedy_task"}


@dataclass
class Stages:
    load_model: Callable | None = None
    score_layers: Callable | None = None
    evaluate: Callable | None = None
    recover: Callable | None = None
    recover_config: Callable | None = None
    measure_efficiency: Callable | None = None

    def resolved(self) -> "Stages":
        """A copy with every unset stage bound to the library function (imported only when needed)."""
        def real(name: str):
            if name == "load_model":
                from prunescope.models import load_model
                return load_model
            if name == "score_layers":
                from prunescope.criteria import score_layers
                return score_layers
            if name == "evaluate":
                from prunescope.eval import evaluate
                return evaluate
            if name == "recover":
                from prunescope.recovery import recover
                return recover
            if name == "recover_config":
                from prunescope.recovery import RecoverConfig
                return RecoverConfig
            from prunescope.study.efficiency import measure_efficiency
            return measure_efficiency

        return replace(self, **{f.name: _Lazy(f.name, real) for f in fields(self) if getattr(self, f.name) is None})


class _Lazy:
    """Imports the real stage function on first call (a study without recovery never imports peft)."""

    def __init__(self, name: str, resolve: Callable[[str], Callable]):
        self.name, self._resolve, self._fn = name, resolve, None

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            self._fn = self._resolve(self.name)
        return self._fn(*args, **kwargs)


def score_file(criterion: str, k: int | None) -> str:
    """File name under ``scores/`` for a criterion (and, for per-count criteria, the count)."""
    return f"{criterion}-k{k}.json" if criterion in PER_COUNT and k is not None else f"{criterion}.json"


def scoring_plan(criteria: Iterable[str], counts: list[int]) -> list[tuple[str, int | None, str]]:
    """(criterion, num_layers argument, file name) for every scoring run the study needs."""
    plan = []
    for crit in criteria:
        if crit in PER_COUNT:
            plan += [(crit, k, score_file(crit, k)) for k in counts]
        elif crit in ITERATIVE:
            plan.append((crit, max(counts), score_file(crit, None)))
        else:
            plan.append((crit, None, score_file(crit, None)))
    return plan


def call_evaluate(evaluate: Callable, model, tokenizer, tasks: list[str], *, out_dir: Path, **kwargs) -> dict:
    """Evaluate into ``out_dir`` so that ``metrics.json`` appears last: the evaluation writes into a
    scratch folder, ``samples.jsonl`` is moved into place, then ``metrics.json`` (the 'finished' mark)."""
    out_dir = Path(out_dir)
    pending = out_dir / ".pending"
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir(parents=True)
    metrics = evaluate(model, tokenizer, tasks, out=str(pending / "metrics.json"), **kwargs)
    if (pending / "samples.jsonl").is_file():
        os.replace(pending / "samples.jsonl", out_dir / "samples.jsonl")
    if (pending / "metrics.json").is_file():
        os.replace(pending / "metrics.json", out_dir / "metrics.json")
    else:
        write_json(out_dir / "metrics.json", metrics)
    shutil.rmtree(pending, ignore_errors=True)
    return metrics


def validate_names(config) -> None:
    """Check criteria, tasks and recovery settings against the registries (did-you-mean errors naming
    the config key) before any work starts."""
    from prunescope.criteria import CRITERIA
    for crit in config.criteria:
        if crit not in CRITERIA:
            raise UsageError(f"criteria: {CRITERIA.unknown_message(crit)}")
    tasks = list(config.tasks) + list(config.ablation.tasks or [])
    get_task = _task_lookup()
    for task in tasks:
        try:
            get_task(task)
        except UsageError as e:
            raise UsageError(f"tasks: {e}") from None
    if config.recovery.methods:
        from prunescope.recovery import RecoverConfig
        valid = {f.name for f in fields(RecoverConfig)}
        for key in config.recovery.settings:
            if key not in valid:
                import difflib
                near = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
                hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(sorted(valid))}"
                raise UsageError(f"unknown key recovery.settings.{key}; {hint}")
        for method in config.recovery.methods:
            try:
                for loss in config.recovery.losses or [None]:
                    RecoverConfig(method=method, **config.recovery.settings, **({"loss": loss} if loss else {}))
            except UsageError as e:
                raise UsageError(f"recovery: {e}") from None


def _task_lookup() -> Callable[[str], Any]:
    try:
        from prunescope.tasks import get_task
        return get_task
    except ImportError:
        from prunescope.tasks.spec import TASKS
        return lambda name: TASKS.get(name)
