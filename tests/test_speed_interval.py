"""The speedup's rank interval and the "faster" rule, against computations written here (brute-force
permutation counts, hand-made rounds whose answer is obvious)."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from prunescope.speed import ratio_interval, speed_verdict, trim_count


def _perm_p_faster(cell, base) -> float:
    """Exact one-sided p of "cell rates exceed base rates": the share of all ways to split the pooled rounds
    into groups of the two sizes whose first group beats the second in at least as many pairs."""
    pooled, n = list(cell) + list(base), len(cell)
    wins = lambda a, b: sum(x > y for x in a for y in b)  # noqa: E731
    observed = wins(cell, base)
    splits = list(itertools.combinations(range(len(pooled)), n))
    hits = sum(wins([pooled[i] for i in s], [pooled[i] for i in range(len(pooled)) if i not in s]) >= observed
               for s in splits)
    return hits / len(splits)


def test_every_cell_round_twice_every_base_round_is_faster():
    base, cell = [10.0, 11.0, 12.0], [20.0, 22.0, 24.0]
    iv = ratio_interval(cell, base)
    # 3 against 3: the ends are the extreme pairwise ratios, min cell / max base and max cell / min base
    assert (iv["lo"], iv["hi"]) == pytest.approx((20 / 12, 24 / 10))
    assert iv["ratio"] == pytest.approx(22 / 11) and iv["level"] == pytest.approx(0.9)
    assert speed_verdict(iv) == "faster"
    assert _perm_p_faster(cell, base) == pytest.approx(1 / 20)  # the chance of this split if nothing differs
    assert speed_verdict(ratio_interval(base, cell)) == "slower"


def test_overlapping_rounds_are_not_distinguishable_even_with_a_higher_median():
    # medians 30 vs 21 (ratio 1.43), but one cell round is slower than every base round
    base, cell = [20.0, 21.0, 22.0], [10.0, 30.0, 31.0]
    iv = ratio_interval(cell, base)
    assert iv["ratio"] > 1.4 and iv["lo"] == pytest.approx(10 / 22) and iv["lo"] < 1 < iv["hi"]
    assert speed_verdict(iv) == "not distinguishable"
    assert _perm_p_faster(cell, base) > 0.05


def test_unpaired_rounds_and_too_few_rounds_make_no_claim():
    base, cell = [10.0, 11.0, 12.0], [20.0, 22.0, 24.0]
    assert speed_verdict(ratio_interval(cell, base, paired=False)) == "not distinguishable"
    two = ratio_interval([20.0, 22.0], [10.0, 11.0])  # 2 against 2: every split has chance 1/6 > 5%
    assert two["lo"] is None and two["level"] is None and speed_verdict(two) == "not distinguishable"
    assert speed_verdict(None) == "not distinguishable"  # an efficiency.json written before intervals
    assert speed_verdict({"ratio": 2.0}) == "not distinguishable"


def _u_cdf_brute(n: int, m: int, u: int) -> float:
    """P(U <= u) by enumerating every split of n + m distinct ranks."""
    splits = list(itertools.combinations(range(n + m), n))
    count = sum(sum(a > b for a in s for b in set(range(n + m)) - set(s)) <= u for s in splits)
    return count / len(splits)


@pytest.mark.parametrize("n,m", [(3, 3), (4, 4), (5, 5), (3, 5), (2, 2)])
def test_trim_count_is_the_largest_with_tail_at_most_five_percent(n, m):
    k = trim_count(n, m)
    assert k == 0 or _u_cdf_brute(n, m, k - 1) <= 0.05
    assert _u_cdf_brute(n, m, k) > 0.05


@pytest.mark.parametrize("n,m,seed", [(4, 4, 1), (5, 5, 2), (5, 3, 3)])
def test_interval_ends_are_where_the_exact_rank_test_flips(n, m, seed):
    """Inverting the test by hand: dividing the cell's rates by a ratio just under the lower end leaves them
    significantly faster (p <= 5%); just above it, not."""
    rng = random.Random(seed)
    base = [100 * math.exp(rng.gauss(0, 0.1)) for _ in range(m)]
    cell = [130 * math.exp(rng.gauss(0, 0.1)) for _ in range(n)]
    iv = ratio_interval(cell, base)
    assert _perm_p_faster([c / (iv["lo"] * 0.999) for c in cell], base) <= 0.05
    assert _perm_p_faster([c / (iv["lo"] * 1.001) for c in cell], base) > 0.05
    # and symmetrically at the upper end, for "slower"
    assert _perm_p_faster(base, [c / (iv["hi"] * 1.001) for c in cell]) <= 0.05
    assert _perm_p_faster(base, [c / (iv["hi"] * 0.999) for c in cell]) > 0.05
