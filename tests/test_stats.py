"""Paired bootstrap: checked against scipy.stats.bootstrap, a brute-force loop and hand-worked numbers;
the planted bug (resampling base and pruned independently) is caught."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from prunescope.stats import (CLS_LESS, GEN_LESS, UNCLEAR, Paired, interval, kind_gap, pair_samples,
                              resample_indices, verdict)


def _correlated(n=200, p_base=0.7, flip=0.15, seed=1):
    """Base flags and pruned flags that agree on most items (as a pruned model's do)."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) < p_base
    pruned = base & (rng.random(n) > flip)
    return base, pruned


def test_point_estimates_by_hand():
    # 10 items: base 8 right, pruned 5 right, chance 0.25 -> raw 5/8, adjusted (0.5-0.25)/(0.8-0.25) = 0.4545...
    base = [1] * 8 + [0] * 2
    pruned = [1] * 5 + [0] * 5
    t = Paired("t", "multiple_choice", 0.25, tuple(map(str, range(10))), base, pruned)
    assert t.retention()[0] == pytest.approx(5 / 8)
    assert t.retention_adj()[0] == pytest.approx(0.25 / 0.55)
    assert t.drop()[0] == pytest.approx(0.3)


def test_paired_interval_matches_scipy_and_a_loop():
    base, pruned = _correlated()
    ids = tuple(f"q{i}" for i in range(base.size))
    t = Paired("t", "generate", 0.25, ids, base, pruned, resamples=4000)
    lo, hi = interval(t.retention_adj()[1])

    def adj(b, p, axis=-1):
        return (np.mean(p, axis=axis) - 0.25) / (np.mean(b, axis=axis) - 0.25)

    ref = sps.bootstrap((base.astype(float), pruned.astype(float)), adj, paired=True, vectorized=True,
                        n_resamples=4000, method="percentile", random_state=np.random.default_rng(7))
    # two independent Monte Carlo runs of the same bootstrap: ends agree within Monte Carlo error
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.02)
    # brute force with the very same resampled indices: exact agreement
    idx = resample_indices(base.size, resamples=4000, seed=0, key="\n".join(ids))
    loop = [adj(base[row].astype(float), pruned[row].astype(float)) for row in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])))


def test_unpaired_resampling_is_caught():
    """The bug to fear: base and pruned resampled independently. On correlated items that interval is far
    wider than the paired one, and the paired one matches scipy's paired bootstrap, not the unpaired one."""
    base, pruned = _correlated()
    t = Paired("t", "generate", 0.0, tuple(map(str, range(base.size))), base, pruned)
    lo, hi = interval(t.drop()[1])
    rng = np.random.default_rng(3)
    n = base.size
    unpaired = [base[rng.integers(0, n, n)].mean() - pruned[rng.integers(0, n, n)].mean() for _ in range(2000)]
    u_lo, u_hi = np.quantile(unpaired, [0.025, 0.975])
    paired_ref = sps.bootstrap((base.astype(float), pruned.astype(float)),
                               lambda b, p, axis=-1: b.mean(axis) - p.mean(axis), paired=True, vectorized=True,
                               n_resamples=2000, method="percentile", random_state=np.random.default_rng(5))
    ref_width = paired_ref.confidence_interval.high - paired_ref.confidence_interval.low
    assert hi - lo == pytest.approx(ref_width, rel=0.15)
    assert (u_hi - u_lo) > 1.5 * (hi - lo)


def test_resamples_are_shared_by_item_ids_and_seeded():
    a = resample_indices(50, seed=0, key="x\ny")
    assert np.array_equal(a, resample_indices(50, seed=0, key="x\ny"))
    assert not np.array_equal(a, resample_indices(50, seed=1, key="x\ny"))
    assert not np.array_equal(a, resample_indices(50, seed=0, key="x\nz"))


def test_near_chance_task_has_no_adjusted_retention():
    t = Paired("t", "multiple_choice", 0.25, tuple("abcdefghij"), [1] * 3 + [0] * 7, [1] * 2 + [0] * 8)
    assert "within 0.10 of chance" in t.reason
    s = t.summary()
    assert math.isnan(s["retention_adj"]) and math.isnan(s["retention_adj_lo"]) and s["retention"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("lo, hi, expected", [(0.1, 0.3, GEN_LESS), (-0.3, -0.01, CLS_LESS), (-0.1, 0.2, UNCLEAR),
                                              (0.0, 0.2, UNCLEAR)])
def test_verdict_follows_the_interval(lo, hi, expected):
    assert verdict(lo, hi) == expected


def _kinds(n, seed=0, gen_keep=0.5):
    rng = np.random.default_rng(seed)
    ids = tuple(map(str, range(n)))
    mc_base = rng.random(n) < 0.8
    gen_base = rng.random(n) < 0.8
    mc = Paired("mc", "multiple_choice", 0.25, ids, mc_base, mc_base & (rng.random(n) > 0.05))
    gen = Paired("gen", "generate", 0.0, ids, gen_base, gen_base & (rng.random(n) > gen_keep))
    return mc, gen


def test_gap_counts_only_what_the_interval_supports():
    mc, gen = _kinds(400, gen_keep=0.5)  # generation keeps about half, classification about 93%
    g = kind_gap([mc, gen])
    assert g["verdict"] == GEN_LESS and g["gap_lo"] > 0
    # the gap's point estimate is the difference of the kinds' adjusted retentions
    assert g["gap"] == pytest.approx(mc.retention_adj()[0] - gen.retention_adj()[0])
    # a small difference on few items: 12 items, both bases 10 right; pruned 9 (mc) and 8 (gen) right
    ids = tuple(map(str, range(12)))
    mc = Paired("mc", "multiple_choice", 0.25, ids, [1] * 10 + [0] * 2, [1] * 9 + [0] * 3)
    gen = Paired("gen", "generate", 0.0, ids, [0] * 2 + [1] * 10, [0] * 4 + [1] * 8)
    g = kind_gap([mc, gen])
    assert g["gap"] > 0  # generation's point estimate is lower ...
    assert g["gap_lo"] < 0 < g["gap_hi"] and g["verdict"] == UNCLEAR


def test_gap_without_an_eligible_kind_says_why():
    mc, gen = _kinds(50)
    weak = Paired("mc", "multiple_choice", 0.75, mc.ids, mc.base, mc.other)
    g = kind_gap([weak, gen])
    assert g["verdict"] == "" and "no multiple_choice task" in g["reason"] and math.isnan(g["gap"])


def test_pair_samples_aligns_by_id():
    base = [{"task": "a", "id": i, "correct": i % 2 == 0} for i in range(4)]
    other = [{"task": "a", "id": i, "correct": i == 3} for i in (3, 2, 1, 0)]
    assert pair_samples(base, other)["a"] == (("0", "1", "2", "3"), [True, False, True, False],
                                              [False, False, False, True])
    assert pair_samples(base, [{"task": "a", "id": 9, "correct": True}]) == {}


def test_metrics_json_gets_adjusted_retention():
    from prunescope.eval.metrics import add_retention
    tasks = {"a": {"accuracy": 0.5, "chance": 0.25}, "b": {"accuracy": 0.3, "chance": 0.25}}
    add_retention(tasks, {"tasks": {"a": {"accuracy": 0.8}, "b": {"accuracy": 0.3}}})
    assert tasks["a"]["retention_adj"] == pytest.approx(0.25 / 0.55)
    assert tasks["b"]["retention_adj"] is None and "within 0.10 of chance" in tasks["b"]["adj_note"]


def test_samples_without_per_item_results_are_not_paired():
    base = [{"task": "a", "id": 0, "correct": True}, {"task": "b", "id": 0}]
    assert set(pair_samples(base, base)) == {"a"}
