"""Speed ratios from timed rounds, with a distribution-free interval, and the one rule for saying "faster".

A decode speedup is ``median(cell rounds) / median(base rounds)`` (tokens/s). Its interval is the Moses
(1965) rank interval for a shift, taken on log rates so the shift is a ratio: sort the ``n * m`` ratios
``cell_i / base_j``; the interval runs from the ``k``-th smallest to the ``k``-th largest, where ``k`` is the
largest count with ``P(U <= k - 1) <= ALPHA`` for the Mann-Whitney ``U`` of ``n`` and ``m`` exchangeable
rounds. Then each side misses the true ratio with probability at most ``ALPHA`` (5%), so "faster" (lower end
above 1) and "slower" (upper end below 1) are each one-sided exact rank tests at 5%, and the interval covers
the ratio with probability at least 90% (reported as ``level``).

Why this and not a bootstrap: the study times 3 rounds of each. A bootstrap over 3 values is crude and
anticonservative; the rank interval is exact for any number of rounds under one assumption -- that the
rounds of the two arms are exchangeable apart from the speed ratio. With 3 against 3, ``k = 1`` and the
interval is ``[min cell / max base, max cell / min base]``: "faster" is said only when every round of the
cell beat every round of the base, which happens by chance with probability ``1 / C(6, 3) = 1/20``. With
fewer rounds (2 against 2: 1/6) no claim is possible and no interval is given. A 95% two-sided interval
would need 4 rounds of each.

The assumption holds when the rounds are interleaved in one step (``study.efficiency.measure_against_base``
alternates base and cell rounds), so load from other processes falls on both arms alike. Rounds of a base
measured in another step or run are not exchangeable with the cell's (machine load drifts between steps: the
same unchanged model measured 0.88x and 0.99x against a base timed minutes earlier), so such a ratio is
marked ``paired: false`` and never supports a claim (``speed_verdict``).
"""
from __future__ import annotations

import math
import statistics
from functools import lru_cache
from typing import Sequence

ALPHA = 0.05  # error of each one-sided claim ("faster", "slower")
METHOD = "Moses rank interval on round ratios (exact; each side 5%)"


@lru_cache(maxsize=None)
def _u_counts(n: int, m: int) -> tuple[int, ...]:
    """Number of the C(n+m, n) orderings of n and m distinct values giving each Mann-Whitney U = 0..n*m."""
    if n == 0 or m == 0:
        return (1,)
    # the largest value is either one of the n (it beats all m others: U gains m) or one of the m
    a, b = _u_counts(n - 1, m), _u_counts(n, m - 1)
    out = [0] * (n * m + 1)
    for u, c in enumerate(a):
        out[u + m] += c
    for u, c in enumerate(b):
        out[u] += c
    return tuple(out)


def null_cdf(n: int, m: int, u: int) -> float:
    """``P(U <= u)`` for exchangeable samples of sizes ``n`` and ``m`` (no ties)."""
    counts = _u_counts(n, m)
    return sum(counts[: max(0, u + 1)]) / sum(counts)


def trim_count(n: int, m: int, alpha: float = ALPHA) -> int:
    """``k``: how far in from each end of the sorted pairwise ratios the interval's ends lie (0: too few rounds
    for any interval at ``alpha``)."""
    k = 0
    while k < n * m and null_cdf(n, m, k) <= alpha:  # P(U <= (k + 1) - 1) <= alpha: k + 1 still allowed
        k += 1
    return k


def ratio_interval(cell: Sequence[float], base: Sequence[float], *, paired: bool = True,
                   alpha: float = ALPHA) -> dict:
    """The speedup of ``cell`` over ``base`` (rates: larger is faster) with its rank interval (module docstring).

    Returns ``{ratio, lo, hi, level, rounds: [cell, base], paired, method}``; ``lo``/``hi``/``level`` are None
    when there are too few rounds for an interval at ``alpha`` on each side."""
    cell, base = [float(x) for x in cell], [float(x) for x in base]
    if not cell or not base or min(cell + base) <= 0:
        raise ValueError("ratio_interval needs at least one positive rate on each side")
    out = {"ratio": statistics.median(cell) / statistics.median(base), "lo": None, "hi": None, "level": None,
           "rounds": [len(cell), len(base)], "paired": bool(paired), "method": METHOD}
    k = trim_count(len(cell), len(base), alpha)
    if k:
        logs = sorted(math.log(c) - math.log(b) for c in cell for b in base)
        out.update(lo=math.exp(logs[k - 1]), hi=math.exp(logs[-k]),
                   level=1 - 2 * null_cdf(len(cell), len(base), k - 1))
    return out


def speed_verdict(interval: dict | None) -> str:
    """'faster', 'slower' or 'not distinguishable': a claim only from an interval of interleaved rounds that
    excludes 1. No interval (an old efficiency.json, too few rounds, a base timed in another step) is no claim."""
    if not interval or interval.get("lo") is None or interval.get("hi") is None or not interval.get("paired"):
        return "not distinguishable"
    if interval["lo"] > 1.0:
        return "faster"
    if interval["hi"] < 1.0:
        return "slower"
    return "not distinguishable"


def decode_interval(efficiency: dict | None) -> dict | None:
    """The decode speedup interval an efficiency.json holds (None for a file written before intervals)."""
    return ((efficiency or {}).get("speedup") or {}).get("decode_interval")


def fmt_speedup(ratio, interval: dict | None) -> str:
    """``1.23x [1.05, 1.40]``, or ``1.23x`` alone when there is no interval; ``-`` without a ratio."""
    if ratio is None or ratio != ratio:
        return "-"
    if interval and interval.get("lo") is not None:
        return f"{ratio:.2f}x [{interval['lo']:.2f}, {interval['hi']:.2f}]"
    return f"{ratio:.2f}x"
