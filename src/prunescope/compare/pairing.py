"""Matching items across runs and the paired differences between them.

Items match by task name and item id (a repeated id matches by its occurrence), and — with ``match="content"``,
the default — only when the prompt, choices and gold answer recorded in samples.jsonl are the same too, so two
runs whose generators give one id to different questions are not paired by accident.

A difference B − A is a paired bootstrap over the shared items (prunescope.stats: the resample depends only on
the seed and the item ids, so both runs are resampled with the same indices). With ``unpaired=True`` each run
is resampled over its own items instead (for runs evaluated on different items, e.g. different seeds): the
indices then come from different keys and are independent.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from prunescope import stats

CONTENT_FIELDS = ("prompt", "choices", "gold")


def items_by_task(samples: list[dict]) -> tuple[dict[str, dict[str, tuple[bool, str]]], list[str]]:
    """Per task, item key -> (correct, content fingerprint), in file order; and the tasks left out because a
    row has no id or no per-item correctness (such tasks cannot be paired)."""
    out: dict[str, dict[str, tuple[bool, str]]] = {}
    bad: set[str] = set()
    for row in samples:
        task = row.get("task")
        if "id" not in row or "correct" not in row:
            bad.add(task)
            continue
        items = out.setdefault(task, {})
        base = str(row["id"])
        key, n = base, 1
        while key in items:  # a repeated id: pair its occurrences in order
            n += 1
            key = f"{base}#{n}"
        content = {f: row[f] for f in CONTENT_FIELDS if f in row}
        items[key] = (bool(row["correct"]), hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()
                      if content else "")
    return {t: v for t, v in out.items() if t not in bad}, sorted(bad, key=str)


def shared_keys(a: dict, b: dict, *, match: str) -> tuple[list[str], int]:
    """Keys in both (in ``a``'s order) and how many shared ids were dropped because their content differs."""
    both = [k for k in a if k in b]
    if match == "id":
        return both, 0
    same = [k for k in both if not a[k][1] or not b[k][1] or a[k][1] == b[k][1]]
    return same, len(both) - len(same)


def independent(ids, run: str) -> tuple[str, ...]:
    """Item ids tagged with a run's name: the resample stats draws for them differs from the untagged ids' one,
    so ``unpaired`` resamples are independent even when both runs hold the same ids."""
    return tuple(f"{run}\0{i}" for i in ids)


def boot_means(ids, values: np.ndarray, *, seed: int, resamples: int) -> np.ndarray:
    """Bootstrap means of ``values`` with the resample that stats gives these item ids."""
    idx = stats.resample_indices(len(ids), resamples=resamples, seed=seed, key="\n".join(ids))
    return np.asarray(values, dtype=float)[idx].mean(axis=1)


def reading(lo: float, hi: float, a: str = "A", b: str = "B") -> str:
    """How an interval of B − A reads: a run is named higher only when the interval excludes 0."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    if lo > 0:
        return f"{b} higher"
    if hi < 0:
        return f"{a} higher"
    return stats.UNCLEAR


def accuracy_difference(ids_a: list[str], a: list[bool], ids_b: list[str], b: list[bool], *, paired: bool,
                        seed: int, resamples: int, level: float = stats.LEVEL) -> dict:
    """Accuracy of A and of B, their difference B − A and its percentile interval. ``paired``: the items are
    the same (``ids_a == ids_b``, same order) and both runs get the same resample indices; else independent
    resamples of each run's items."""
    if paired and list(ids_a) != list(ids_b):
        raise ValueError("a paired difference needs the same items in the same order")
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    key_b = ids_b if paired else independent(ids_b, "B")
    diff = boot_means(key_b, vb, seed=seed, resamples=resamples) - boot_means(ids_a, va, seed=seed,
                                                                              resamples=resamples)
    lo, hi = stats.interval(diff, level)
    return {"acc_a": float(va.mean()), "acc_b": float(vb.mean()), "diff": float(vb.mean() - va.mean()),
            "lo": lo, "hi": hi, "n_a": len(ids_a), "n_b": len(ids_b), "paired": paired}


def kind_retention(pairs: list[stats.Paired]) -> tuple[float, np.ndarray]:
    """Mean chance-adjusted retention over tasks, point and per resample, as the report's kind retention
    (stats.kind_gap) computes it."""
    return stats.mean_of([p.retention_adj() for p in pairs])
