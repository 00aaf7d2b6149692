"""Accuracy with honest uncertainty: Wilson intervals, chance-normalised accuracy, retention.

The Wilson score interval stays inside [0, 1] and keeps a sensible width at 0 % or 100 % on small
samples, where the normal approximation collapses to a zero-width interval.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def wilson_interval(correct: int, n: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for ``correct`` successes out of ``n`` (``(0, 1)`` when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends: no rounding residue
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def proportion(flags: Sequence[bool]) -> dict[str, Any]:
    """``{accuracy, correct, n, ci95}`` for a list of right/wrong flags."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    return {"accuracy": k / n if n else 0.0, "correct": k, "n": n, "ci95": list(wilson_interval(k, n))}


def chance_normalised(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 when perfect, negative below chance."""
    return (accuracy - chance) / (1 - chance) if chance < 1 else 0.0


def retention(accuracy: float, baseline: float | None) -> float | None:
    """accuracy / baseline accuracy (None when the baseline is missing or 0)."""
    if baseline is None or baseline <= 0:
        return None
    return accuracy / baseline


def summarise(flags: Sequence[bool], *, kind: str, chance: float) -> dict[str, Any]:
    """The core metrics of one task: kind, n, accuracy, ci95, chance, normalized, correct."""
    p = proportion(flags)
    return {"kind": kind, "n": p["n"], "accuracy": p["accuracy"], "ci95": p["ci95"], "chance": chance,
            "normalized": chance_normalised(p["accuracy"], chance), "correct": p["correct"]}


def add_retention(tasks: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> None:
    """Add ``retention``, ``retention_adj`` ((acc - chance) / (base - chance), None with an ``adj_note`` when
    the base is within 0.10 of chance; see prunescope.stats) and ``normalized_retention`` to every task also
    present in ``baseline`` (a metrics.json dict), in place. Paired intervals need the per-item samples:
    the study's results.csv and report carry them."""
    from prunescope.stats import adjusted_reason
    base_tasks = baseline.get("tasks", baseline)
    for name, m in tasks.items():
        b = base_tasks.get(name)
        if not isinstance(b, dict) or "accuracy" not in b:
            continue
        m["baseline_accuracy"] = b["accuracy"]
        m["retention"] = retention(m["accuracy"], b["accuracy"])
        chance = m.get("chance", b.get("chance"))
        note = adjusted_reason(b["accuracy"], chance)
        m["retention_adj"] = None if note else (m["accuracy"] - chance) / (b["accuracy"] - chance)
        if note:
            m["adj_note"] = note
        if "normalized" in m and b.get("normalized") is not None:
            m["normalized_retention"] = retention(m["normalized"], b["normalized"])
