"""One comparison, run B against run A: per shared (cell, task) the accuracy difference B − A, and per shared
pruned cell and task kind the difference in chance-adjusted retention (each run's cell against its own
baseline, as the report defines retention), all with paired-bootstrap intervals over the shared items."""
from __future__ import annotations

import math

from prunescope import stats
from prunescope.compare.pairing import (accuracy_difference, independent, items_by_task, kind_retention, reading,
                                        shared_keys)
from prunescope.compare.runs import BASELINE_KEY, EVAL_KEY, Run, Unit
from prunescope.errors import UsageError


def _chance(unit: Unit, base: Unit, task: str):
    m, b = unit.metrics["tasks"][task], base.metrics["tasks"].get(task, {})
    return m.get("chance", b.get("chance"))  # as the report's rows read it (report/tables.py)


class _Items:
    """Per unit, its items by task (parsed once)."""

    def __init__(self):
        self.cache: dict[int, tuple] = {}

    def __call__(self, unit: Unit):
        if id(unit) not in self.cache:
            self.cache[id(unit)] = items_by_task(unit.samples)
        return self.cache[id(unit)]


def compare_pair(a: Run, b: Run, *, names: tuple[str, str] = ("A", "B"), seed: int = 0,
                 resamples: int = stats.RESAMPLES, match: str = "content", unpaired: bool = False,
                 level: float = stats.LEVEL) -> dict:
    """Rows of B against A. Raises a UsageError when no (cell, task) has items in both runs."""
    na, nb = names
    items = _Items()
    out: dict = {"a": na, "b": nb, "tasks": [], "retention": [], "notes": [], "content_differs": [],
                 "only_a": [u.label for k, u in a.units.items() if k not in b.units],
                 "only_b": [u.label for k, u in b.units.items() if k not in a.units]}
    looked: list[str] = []
    one_side: dict[tuple[str, str], list[str]] = {}  # (task, run) -> cells where only that run has the task
    for key, ua in a.units.items():
        ub = b.units.get(key)
        if ub is None:
            continue
        (ia, _), (ib, _) = items(ua), items(ub)
        tasks_a, tasks_b = list(ua.metrics["tasks"]), list(ub.metrics["tasks"])
        for task in [t for t in tasks_a if t in tasks_b]:
            if task not in ia or task not in ib:
                out["notes"].append(f"{ua.label} / {task}: no per-item results with ids (samples.jsonl) in "
                                    f"{na if task not in ia else nb}")
                continue
            looked.append(f"{ua.label}/{task} ({na} {len(ia[task])} ids e.g. {next(iter(ia[task]), '-')}, "
                          f"{nb} {len(ib[task])} ids e.g. {next(iter(ib[task]), '-')})")
            if unpaired:
                ka, kb = list(ia[task]), list(ib[task])
            else:
                ka, dropped = shared_keys(ia[task], ib[task], match=match)
                kb = ka
                if dropped:
                    out["content_differs"].append((ua.label, task, dropped))
                if not ka:
                    continue
                if len(ka) + dropped < max(len(ia[task]), len(ib[task])):  # beyond those left out for content
                    out["notes"].append(f"{ua.label} / {task}: compared on the {len(ka)} shared items of "
                                        f"{len(ia[task])} in {na} and {len(ib[task])} in {nb}")
            row = accuracy_difference(ka, [ia[task][k][0] for k in ka], kb, [ib[task][k][0] for k in kb],
                                      paired=not unpaired, seed=seed, resamples=resamples, level=level)
            out["tasks"].append({"key": key, "cell": ua.label, "task": task, "kind": ua.metrics["tasks"][task]["kind"],
                                 **row, "verdict": reading(row["lo"], row["hi"], na, nb)})
        for side, mine, theirs in ((na, tasks_a, tasks_b), (nb, tasks_b, tasks_a)):
            for t in mine:
                if t not in theirs:
                    one_side.setdefault((t, side), []).append(ua.label)
        if key not in (BASELINE_KEY, EVAL_KEY) and a.baseline is not None and b.baseline is not None:
            out["retention"] += _retention_rows(key, ua, ub, a.baseline, b.baseline, items, names=names, seed=seed,
                                                resamples=resamples, match=match, unpaired=unpaired, level=level)
    shared = sum(k in b.units for k in a.units)
    out["notes"] += [f"task {t} only in {side}" + ("" if len(cells) == shared else f" ({', '.join(cells)})")
                     for (t, side), cells in one_side.items()]
    if not out["tasks"]:
        raise UsageError(_no_items_message(a, b, names, looked, out))
    return out


def _retention_rows(key, ua: Unit, ub: Unit, base_a: Unit, base_b: Unit, items, *, names, seed, resamples, match,
                    unpaired, level) -> list[dict]:
    """Per kind: mean chance-adjusted retention of the cell in A and in B (tasks eligible in both, on the items
    all four evaluations share) and its difference B − A."""
    na, nb = names
    ia, ib, ja, jb = items(ua)[0], items(ub)[0], items(base_a)[0], items(base_b)[0]
    per_kind: dict[str, tuple[list, list]] = {}
    left_out: dict[str, list[str]] = {}
    for task in [t for t in ua.metrics["tasks"] if t in ub.metrics["tasks"]]:
        if not all(task in d for d in (ia, ib, ja, jb)):
            continue
        kind = ua.metrics["tasks"][task]["kind"]
        in_a = [k for k in ja[task] if k in ia[task]]  # within a run, base and cell pair by id (as the report)
        in_b = [k for k in jb[task] if k in ib[task]]
        if not unpaired:
            both, _ = shared_keys({k: ja[task][k] for k in in_a}, {k: jb[task][k] for k in in_b}, match=match)
            in_a = in_b = both
        if not in_a or not in_b:
            continue
        pa = stats.Paired(task, kind, _chance(ua, base_a, task), tuple(in_a), [ja[task][k][0] for k in in_a],
                          [ia[task][k][0] for k in in_a], seed=seed, resamples=resamples)
        ids_b = independent(in_b, "B") if unpaired else tuple(in_b)  # unpaired: B's own resamples
        pb = stats.Paired(task, kind, _chance(ub, base_b, task), ids_b, [jb[task][k][0] for k in in_b],
                          [ib[task][k][0] for k in in_b], seed=seed, resamples=resamples)
        if pa.reason or pb.reason:
            left_out.setdefault(kind, []).append(f"{task} ({pa.reason or pb.reason})")
            continue
        per_kind.setdefault(kind, ([], []))
        per_kind[kind][0].append(pa)
        per_kind[kind][1].append(pb)
    rows = []
    for kind, (pas, pbs) in per_kind.items():
        (ra, boot_a), (rb, boot_b) = kind_retention(pas), kind_retention(pbs)
        lo, hi = stats.interval(boot_b - boot_a, level)
        rows.append({"key": key, "cell": ua.label, "kind": kind, "tasks": [p.task for p in pas],
                     "ret_a": ra, "ret_b": rb, "diff": rb - ra if math.isfinite(ra) and math.isfinite(rb) else math.nan,
                     "lo": lo, "hi": hi, "verdict": reading(lo, hi, na, nb), "left_out": left_out.get(kind, [])})
    return rows


def _no_items_message(a: Run, b: Run, names, looked: list[str], out: dict) -> str:
    na, nb = names
    shared_cells = [u.label for k, u in a.units.items() if k in b.units]
    if not shared_cells:
        cells_a, cells_b = (", ".join(u.label for u in r.units.values()) for r in (a, b))
        return (f"runs share no items: {na} ({a.path}) and {nb} ({b.path}) have no cell in common ({na}: "
                f"{cells_a}; {nb}: {cells_b}); "
                f"pass two study runs, or two eval folders (a run's baseline/ or cells/NAME/ is one)")
    if not looked:
        ua, ub = next((u, b.units[k]) for k, u in a.units.items() if k in b.units)
        return (f"runs share no items: their shared cells ({', '.join(shared_cells)}) have no task with per-item "
                f"results in both ({na}: {', '.join(ua.metrics['tasks'])}; {nb}: {', '.join(ub.metrics['tasks'])}); "
                f"evaluate both on the same tasks")
    differ = sum(n for *_, n in out["content_differs"])
    if differ:
        return (f"runs share no items: {differ} item id(s) are in both but their prompts, choices or gold answers "
                f"differ (e.g. a different chat template or task version); pass --match id to pair items by id alone")
    return (f"runs share no items: looked at {'; '.join(looked[:3])}{' …' if len(looked) > 3 else ''}; evaluate both "
            f"runs with the same --seed and tasks to pair them, or pass --unpaired to compare them as independent "
            f"samples")
