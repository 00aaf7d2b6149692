"""Layer selection and accuracy statistics against hand-worked values."""
from __future__ import annotations

import pytest

from prunescope.errors import UsageError
from prunescope.eval.metrics import (add_retention, chance_normalised, proportion, retention, summarise,
                                     wilson_interval)
from prunescope.pruning.selection import check_count, count_for_ratio, layers_from_order, parse_layer_list


@pytest.mark.parametrize("text,layers", [("3,5,7", [3, 5, 7]), ("3-5", [3, 4, 5]), (" 1 , 2 ,", [1, 2]),
                                         ("0-1,4", [0, 1, 4]), ("7", [7]), ("5-5", [5]), (",2", [2]),
                                         ("2,,3", [2, 3])])
def test_parse_layer_list(text, layers):
    assert parse_layer_list(text) == layers


@pytest.mark.parametrize("text", ["a", "1,b", "3-x", "", " , ", "1.5", "-1", "5-3", "1,5-3", "3--5", "1-2-3"])
def test_parse_layer_list_refuses_with_the_flag_named(text):
    with pytest.raises(UsageError, match="^--layers"):
        parse_layer_list(text)
    with pytest.raises(UsageError, match="^--skip"):
        parse_layer_list(text, flag="--skip")


def test_layers_from_order_takes_the_first_k_sorted():
    assert layers_from_order([5, 1, 3, 0, 2, 4], 3, 6) == [1, 3, 5]
    assert layers_from_order([5, 1, 3, 0, 2, 4], 1, 6) == [5]
    assert layers_from_order([5, 1], 2, 6) == [1, 5]
    with pytest.raises(UsageError, match="^--num-layers 3: the scores only give an order for 2 layers"):
        layers_from_order([5, 1], 3, 6)
    with pytest.raises(UsageError, match="^--num-layers 6 must be less than the model's 6 layers"):
        layers_from_order([0, 1, 2, 3, 4, 5], 6, 6)
    with pytest.raises(UsageError, match="^-k 0 must be at least 1"):
        layers_from_order([0, 1], 0, 6, flag="-k")


def test_check_count_bounds():
    assert check_count(1, 6) == 1 and check_count(5, 6) == 5
    with pytest.raises(UsageError, match="^--num-layers 0 must be at least 1"):
        check_count(0, 6)
    with pytest.raises(UsageError, match="^-n 6 must be less than"):
        check_count(6, 6, flag="-n")
    with pytest.raises(UsageError, match="^--keep 0.99 would remove all 4 layers"):
        count_for_ratio(0.99, 4, flag="--keep")


# Wilson 95% intervals worked out from the closed form (z = 1.96), as tabulated by Newcombe (1998).
@pytest.mark.parametrize("correct,n,lo,hi", [(7, 10, 0.3968, 0.8922), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                             (1, 2, 0.0945, 0.9055), (81, 263, 0.2553, 0.3662),
                                             (0, 1, 0.0, 0.7935), (1, 1, 0.2065, 1.0)])
def test_wilson_interval(correct, n, lo, hi):
    got = wilson_interval(correct, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # exactly 0 and 1 at the ends (the closed form leaves a residue of ~1e-17 at n = 3 and n = 10)
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    # z = 1: centre (0.5 + 1/200) / 1.01 = 0.5, half-width sqrt(0.0025 + 1/40000) / 1.01 = 0.049752
    assert wilson_interval(50, 100, z=1.0) == pytest.approx((0.450248, 0.549752), abs=1e-6)


def test_proportion_and_summary():
    assert proportion([True, False, True, True]) == {"accuracy": 0.75, "correct": 3, "n": 4,
                                                     "ci95": pytest.approx(list(wilson_interval(3, 4)))}
    assert proportion([]) == {"accuracy": 0.0, "correct": 0, "n": 0, "ci95": [0.0, 1.0]}
    s = summarise([1, 0, 0, 1, 1], kind="generate", chance=0.25)
    assert s == {"kind": "generate", "n": 5, "accuracy": 0.6, "ci95": pytest.approx(list(wilson_interval(3, 5))),
                 "chance": 0.25, "normalized": pytest.approx((0.6 - 0.25) / 0.75), "correct": 3}


def test_chance_normalised_and_retention():
    assert chance_normalised(0.25, 0.25) == 0.0
    assert chance_normalised(1.0, 0.25) == 1.0
    assert chance_normalised(0.1, 0.25) == pytest.approx(-0.2)
    assert chance_normalised(0.5, 0.0) == 0.5
    assert chance_normalised(0.7, 1.0) == 0.0
    assert retention(0.3, 0.6) == 0.5
    assert retention(0.3, None) is None and retention(0.3, 0.0) is None and retention(0.3, -0.1) is None


def test_add_retention_in_place():
    tasks = {"c": {"accuracy": 0.9}, "a": {"accuracy": 0.4, "normalized": 0.2}, "b": {"accuracy": 0.5}}
    add_retention(tasks, {"tasks": {"a": {"accuracy": 0.8, "normalized": 0.6}, "c": {"n": 3},
                                    "b": {"accuracy": 0.25, "normalized": 0.1}}})
    a, b = tasks["a"], tasks["b"]
    assert (a["baseline_accuracy"], a["retention"]) == (0.8, 0.5)
    assert a["normalized_retention"] == pytest.approx(1 / 3)
    assert (b["baseline_accuracy"], b["retention"]) == (0.25, 2.0) and "normalized_retention" not in b
    assert tasks["c"] == {"accuracy": 0.9}
    flat = {"a": {"accuracy": 0.2}}
    add_retention(flat, {"a": {"accuracy": 0.4, "normalized": None}})  # a bare {task: metrics} baseline
    assert flat["a"]["retention"] == 0.5 and "normalized_retention" not in flat["a"]
