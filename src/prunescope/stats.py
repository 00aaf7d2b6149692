"""Paired bootstrap over items: retention (raw and chance-adjusted) and the classification-vs-generation gap.

Used by evaluation, the study and the report. Base and pruned models are scored on the same items, so
every resample draws item indices once and applies them to both score vectors: the interval then carries
the baseline's uncertainty and the (usually strong) correlation between the two models' per-item results.
Tasks that show the same item ids (a matched ``_gen``/``_mc`` pair) share their resamples too.

The resample for a set of item ids depends only on the seed and the ids, so every cell of a study (and
every rebuild of its report) sees the same resamples; means over tasks, criteria or cells of the
per-resample statistics are themselves valid paired bootstrap distributions.

Intervals are percentile intervals (``scipy.stats.bootstrap(method="percentile", paired=True)``).
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
# A task whose base accuracy is within this of chance has no chance-adjusted retention: the denominator
# (base - chance) is then mostly noise.
MIN_ABOVE_CHANCE = 0.10

GEN_LESS = "generation kept less"
CLS_LESS = "classification kept less"
UNCLEAR = "not distinguishable"


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0, key: str = "") -> np.ndarray:
    """``(resamples, n)`` item indices drawn with replacement, determined by ``seed`` and ``key``
    (the item ids), so the same items get the same resamples wherever they are scored."""
    return _indices(n, resamples, seed, key)


@functools.lru_cache(maxsize=64)
def _indices(n: int, resamples: int, seed: int, key: str) -> np.ndarray:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, n, size=(resamples, n))


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution (NaN resamples, e.g. a zero denominator, ignored)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    """How a classification-minus-generation interval reads: only an interval excluding 0 says who kept less."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    if lo > 0:
        return GEN_LESS
    if hi < 0:
        return CLS_LESS
    return UNCLEAR


def adjusted_reason(base: float, chance: float | None) -> str:
    """Why a task gets no chance-adjusted retention ('' when it gets one)."""
    if chance is None:
        return "chance level unknown"
    if round(base - chance, 9) <= MIN_ABOVE_CHANCE:
        return f"base accuracy {base:.2f} is within {MIN_ABOVE_CHANCE:.2f} of chance {chance:.2f}"
    return ""


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass
class Paired:
    """One task scored by the base and by a changed model on the same items (0/1 per item, same order)."""
    task: str
    kind: str
    chance: float | None
    ids: tuple[str, ...]
    base: np.ndarray
    other: np.ndarray
    seed: int = 0
    resamples: int = RESAMPLES
    _idx: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base = np.asarray(self.base, dtype=float)
        self.other = np.asarray(self.other, dtype=float)
        if self.base.shape != self.other.shape or self.base.ndim != 1 or len(self.ids) != self.base.size:
            raise ValueError(f"{self.task}: base and changed scores must cover the same items")

    @property
    def idx(self) -> np.ndarray:
        if self._idx is None:
            self._idx = resample_indices(len(self.ids), resamples=self.resamples, seed=self.seed,
                                         key="\n".join(self.ids))
            self._idx.setflags(write=False)
        return self._idx

    # point estimates and per-resample vectors (shape (resamples,)) of the statistics used everywhere
    def means(self) -> tuple[float, float]:
        return float(self.base.mean()), float(self.other.mean())

    def boot_means(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base[self.idx].mean(axis=1), self.other[self.idx].mean(axis=1)

    @property
    def reason(self) -> str:
        return adjusted_reason(self.means()[0], self.chance)

    def retention(self) -> tuple[float, np.ndarray]:
        b, o = self.means()
        bb, bo = self.boot_means()
        return (o / b if b > 0 else math.nan), _ratio(bo, bb)

    def retention_adj(self) -> tuple[float, np.ndarray]:
        """(acc - chance) / (base - chance); NaN (and a ``reason``) when base is within 0.10 of chance."""
        if self.reason:
            return math.nan, np.full(self.resamples, np.nan)
        c = float(self.chance)
        b, o = self.means()
        bb, bo = self.boot_means()
        return (o - c) / (b - c), _ratio(bo - c, bb - c)

    def drop(self) -> tuple[float, np.ndarray]:
        """base accuracy - changed accuracy."""
        b, o = self.means()
        bb, bo = self.boot_means()
        return b - o, bb - bo

    def summary(self, level: float = LEVEL) -> dict:
        r, rb = self.retention()
        a, ab = self.retention_adj()
        return {"retention": r, "retention_lo": interval(rb, level)[0], "retention_hi": interval(rb, level)[1],
                "retention_adj": a, "retention_adj_lo": interval(ab, level)[0],
                "retention_adj_hi": interval(ab, level)[1], "adj_note": self.reason}


def mean_of(stats: Sequence[tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
    """Mean of several statistics, point and per resample (valid because resamples are shared by item ids)."""
    points = [s[0] for s in stats]
    return float(np.mean(points)), np.mean(np.stack([s[1] for s in stats]), axis=0)


def kind_gap(tasks: Iterable[Paired], *, classification: str = "multiple_choice", generation: str = "generate",
             level: float = LEVEL) -> dict:
    """Mean chance-adjusted retention per kind and their paired difference (classification - generation)
    with its percentile interval and verdict. Tasks without adjusted retention are left out; the gap is
    empty (with a ``reason``) when a kind has none left."""
    tasks = list(tasks)
    out: dict = {"kinds": {}}
    for kind in (classification, generation):
        members = [t for t in tasks if t.kind == kind and not t.reason]
        if not members:
            out["kinds"][kind] = None
            continue
        point, boot = mean_of([t.retention_adj() for t in members])
        lo, hi = interval(boot, level)
        out["kinds"][kind] = {"retention_adj": point, "lo": lo, "hi": hi, "tasks": [t.task for t in members],
                              "boot": boot}
    cls, gen = out["kinds"][classification], out["kinds"][generation]
    if cls is None or gen is None:
        missing = [k for k, v in ((classification, cls), (generation, gen)) if v is None]
        out.update(gap=math.nan, gap_lo=math.nan, gap_hi=math.nan, verdict="",
                   reason=f"no {' or '.join(missing)} task with a chance-adjusted retention")
        return out
    diff = cls["boot"] - gen["boot"]
    lo, hi = interval(diff, level)
    out.update(gap=cls["retention_adj"] - gen["retention_adj"], gap_lo=lo, gap_hi=hi, verdict=verdict(lo, hi),
               reason="")
    return out


def pair_samples(base_rows: Iterable[dict], other_rows: Iterable[dict]) -> dict[str, tuple[tuple[str, ...], list, list]]:
    """Per task, (ids, base correct, other correct) aligned by item id, from two samples.jsonl row lists.

    Tasks whose item ids differ between the two files are left out (they were not scored on the same items).
    """
    def by_task(rows):
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(r.get("task"), []).append(r)
        # tasks whose samples do not say per item whether it was right cannot be paired
        return {t: rs for t, rs in out.items() if all("id" in r and "correct" in r for r in rs)}

    base, other = by_task(base_rows), by_task(other_rows)
    pairs = {}
    for task, rows in base.items():
        if task not in other:
            continue
        ids_b = [str(r["id"]) for r in rows]
        ids_o = [str(r["id"]) for r in other[task]]
        if ids_b == ids_o:  # same order (also handles repeated ids)
            pairs[task] = (tuple(ids_b), [bool(r["correct"]) for r in rows], [bool(r["correct"]) for r in other[task]])
        elif len(set(ids_b)) == len(ids_b) and sorted(ids_b) == sorted(ids_o) and len(set(ids_o)) == len(ids_o):
            lookup = {str(r["id"]): bool(r["correct"]) for r in other[task]}
            pairs[task] = (tuple(ids_b), [bool(r["correct"]) for r in rows], [lookup[i] for i in ids_b])
    return pairs
