"""Arithmetic probes (tasks/arithmetic.py): every item's answer recomputed here with Python's own
arithmetic on the parsed expression, operand widths counted, distractor sets worked out by hand."""
from __future__ import annotations

import random
import re

import pytest

from prunescope.tasks import TASKS
from prunescope.tasks.arithmetic import _check_gen, distractors, first_int
from prunescope.tasks.spec import Item

_BINARY = re.compile(r"^(\d+) ([-+*]) (\d+)$")
_MIXED = re.compile(r"^\((\d) ([-+*]) (\d)\) ([-+*]) (\d)$")


def _calc(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _value(expr: str) -> int:
    """The value of a probe expression, parsed and computed here (no code under test)."""
    m = _BINARY.match(expr)
    if m:
        return _calc(int(m[1]), m[2], int(m[3]))
    m = _MIXED.match(expr)
    assert m, expr
    return _calc(_calc(int(m[1]), m[2], int(m[3])), m[4], int(m[5]))


def _lines(prompt: str):
    *shots, last = prompt.split("\n")
    return shots, last


@pytest.mark.parametrize("op, sym", [("add", "+"), ("sub", "-"), ("mul", "*")])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_binary_items_are_right_and_have_d_digit_operands(op, sym, d):
    gen = TASKS.get(f"arith_{op}_{d}d_gen")()
    mc = TASKS.get(f"arith_{op}_{d}d_mc")()
    assert gen.kind == "generate" and mc.kind == "multiple_choice"
    assert gen.pair == mc.name and mc.pair == gen.name and gen.stop == ["\n"] and gen.max_new_tokens == 12
    items, mc_items = gen.items(12, seed=3), mc.items(12, seed=3)
    assert [it.id for it in items] == [it.id for it in mc_items]  # matched pair: same items, same context
    for it, m in zip(items, mc_items):
        assert it.prompt == m.prompt
        shots, last = _lines(it.prompt)
        assert len(shots) == 5 and last.endswith(" =")
        expr = last[:-2]
        a, s, b = _BINARY.match(expr).groups()
        assert s == sym and all(len(x) == d for x in (a, b))
        if sym == "-":
            assert int(a) >= int(b)
        assert it.gold == _value(expr) and it.target == f" {it.gold}" and it.meta["expression"] == expr
        for shot in shots:  # the worked examples are right too
            e, v = shot.split(" = ")
            assert int(v) == _value(e) and len(_BINARY.match(e)[1]) == d
        assert _check_gen(it, f" {it.gold}\n") and not _check_gen(it, f" {it.gold + 1}")
        # multiple choice: gold text at the gold position, four distinct same-width answers ending in "\n"
        assert m.choices[m.gold] == f" {it.gold}\n" == m.target and len(m.choices) == 4
        values = [int(c) for c in m.choices]
        assert all(c.startswith(" ") and c.endswith("\n") for c in m.choices)
        assert len(set(values)) == 4 and all(v >= 0 and len(str(v)) == len(str(it.gold)) for v in values)
        assert m.meta["expression"] == expr and m.meta["value"] == it.gold


def test_gold_positions_are_balanced():
    items = TASKS.get("arith_add_2d_mc")().items(40, seed=0)
    counts = [sum(it.gold == p for it in items) for p in range(4)]
    assert counts == [10, 10, 10, 10]


def test_mixed_probe_items_are_right_and_non_negative():
    for name in ("arith_mixed_gen", "arith_mixed_mc", "arith_mixed_first_digit"):
        task = TASKS.get(name)()
        for it in task.items(15, seed=1):
            shots, last = _lines(it.prompt)
            assert len(shots) == 3
            expr = last[:-2]
            value = _value(expr)
            assert value >= 0 and all(int(v) == _value(e) >= 0 for e, v in (s.split(" = ") for s in shots))
            if name == "arith_mixed_gen":
                assert it.gold == value
            elif name == "arith_mixed_mc":
                assert it.choices[it.gold] == f" {value}\n"
            else:
                assert it.choices == [f" {d}" for d in range(10)]
                assert it.gold == int(str(value)[0]) and it.target == f" {str(value)[0]}"
                assert it.meta["expression"] == expr and it.meta["value"] == value
    assert TASKS.get("arith_mixed_first_digit")().pair == "arith_mixed_gen"


def test_all_operators_show_up_in_the_mixed_probe():
    exprs = [it.meta["expression"] for it in TASKS.get("arith_mixed_gen")().items(60, seed=0)]
    ops = {m[i] for e in exprs for m in [_MIXED.match(e)] for i in (2, 4)}
    assert ops == {"+", "-", "*"}
    digits = {int(m[i]) for e in exprs for m in [_MIXED.match(e)] for i in (1, 3, 5)}
    assert digits == set(range(10))


@pytest.mark.parametrize("text, expected", [
    (" 47\n", 47), ("-12abc", -12), ("  1,234 apples", 1234), ("x12", None), ("", None), (" 7 8", 7),
    ("\n3", 3),
])
def test_first_int(text, expected):
    assert first_int(text) == expected


def _union(value, runs=60, **kw):
    seen = set()
    for seed in range(runs):
        got = distractors(value, random.Random(seed), **kw)
        assert len(got) == len(set(got)) == kw.get("k", 3) and value not in got
        seen.update(got)
    return seen


def test_distractors_are_the_six_nearest_candidates_by_hand():
    # 47 (= 12 + 35, no carry): +1 48, -1 46, +10 57, -10 37, swapped 74, reversed 74 (again), carry-less
    # sum 47 (= the value, dropped), +2 49, -2 45, +100 147 (3 digits), ... -> the first six: 48 46 57 37 74 49
    assert _union(47, a=12, b=35) == {48, 46, 57, 37, 74, 49}
    # 45 = 18 + 27: the lost carry gives 35 (1+2=3, 8+7=15 -> 5), already among the first six
    assert _union(45, a=18, b=27) == {46, 44, 55, 35, 54, 47}
    # 91 = 45 + 46: carry-less 81 sits after +1 92, -1 90, -10 81 (dup), swapped 19 -> 92 90 81 19 93 89;
    # +10 = 101 has 3 digits
    assert _union(91, a=45, b=46) == {92, 90, 81, 19, 93, 89}
    # 108 = 59 + 49: 109 107, +10 118, -10 98 (2 digits, dropped), swapped 180, reversed 801, carry-less
    # 98 (dropped), +2 110 -> 109 107 118 180 801 110
    assert _union(108, a=59, b=49) == {109, 107, 118, 180, 801, 110}


def test_distractors_without_operands_and_small_values():
    # 1 digit: only same-width candidates, all non-negative
    assert _union(0) == {1, 2, 3}
    assert _union(9) == {8, 7, 6}
    assert _union(5) == {6, 4, 7, 3, 8, 2}
    # too few same-width candidates: other numbers of that width within 5 fill up
    assert _union(0, k=5) == {1, 2, 3, 4, 5}
    assert _union(9, k=5) == {8, 7, 6, 4, 5}  # 8 7 6, then from 4..9 except 9
    assert _union(10, k=1) <= {11, 20, 12, 13}


def test_distractors_keep_the_far_candidates_after_the_near_ones():
    """The first six candidates are shuffled; later ones keep their order (used only when k > 6)."""
    got = distractors(47, random.Random(0), a=12, b=35, k=8)
    assert set(got[:6]) == {48, 46, 57, 37, 74, 49} and got[6:] == [45, 50]


def test_check_gen_compares_the_first_integer():
    item = Item(id="x", prompt="p", gold=12, target=" 12")
    assert _check_gen(item, " 12 apples") and _check_gen(item, "12") and not _check_gen(item, " 1 2")
    assert not _check_gen(item, "twelve")


def test_operands_cover_their_whole_range():
    from prunescope.tasks.arithmetic import _operand
    rng = random.Random(0)
    one = {_operand(rng, 1) for _ in range(400)}
    two = [_operand(rng, 2) for _ in range(3000)]
    assert one == set(range(10)) and min(two) == 10 and max(two) == 99


def test_binary_draws_by_hand():
    from prunescope.tasks.arithmetic import _draw_binary
    rng = random.Random(1)
    subs = [_draw_binary("-", 2)(rng) for _ in range(300)]
    for expr, value in subs:
        a, b = (int(x) for x in expr.split(" - "))
        assert value == a - b >= 0
    adds = [_draw_binary("+", 1)(rng) for _ in range(100)]
    assert all(v == int(e[0]) + int(e[-1]) for e, v in adds)
    assert any(int(e[0]) < int(e[-1]) for e, _ in adds)  # only subtraction orders its operands
    assert all(v == int(e[0]) * int(e[-1]) for e, v in (_draw_binary("*", 1)(rng) for _ in range(50)))


def test_task_specs():
    gen, mc = TASKS.get("arith_mul_2d_gen")(), TASKS.get("arith_mul_2d_mc")()
    assert (gen.name, gen.family, gen.description) == (
        "arith_mul_2d_gen", "arith_mul_2d", "2-digit multiplication (*), 5-shot, generate the number")
    assert (mc.name, mc.family, mc.description) == (
        "arith_mul_2d_mc", "arith_mul_2d", "2-digit multiplication (*), 5-shot, pick the result among 4")
    item = gen.items(1)[0]
    assert gen.check(item, f" {item.gold} and more") and not gen.check(item, " nothing")
    first = TASKS.get("arith_mixed_first_digit")()
    assert (first.name, first.kind, first.family) == ("arith_mixed_first_digit", "multiple_choice", "arith_mixed")
    assert first.description == ("(a op b) op c, single digits, 3-shot: first digit of the answer, argmax over "
                                 "the ten digits")
    # the first-digit probe shows the arith_mixed_gen items: same ids, same contexts
    mixed = TASKS.get("arith_mixed_gen")().items(8, seed=4)
    firsts = first.items(8, seed=4)
    assert [i.id for i in firsts] == [i.id for i in mixed] and [i.prompt for i in firsts] == [i.prompt for i in mixed]
    assert mixed[0].id == "arith_mixed-eval-4-0"
    assert len(TASKS.get("arith_add_2d_gen")().items(None)) == 200 and len(first.items(None)) == 200


def test_short_families_say_how_many_questions_exist(capsys, monkeypatch):
    from prunescope.tasks import sampling
    monkeypatch.setattr(sampling, "_noticed", set())  # notices print once per process
    items = TASKS.get("arith_mul_1d_gen")().items(150, seed=9)
    assert len(items) < 100
    assert "arith_mul_1d_gen: only" in capsys.readouterr().err


def test_mixed_probe_answers_include_zero_and_repeat():
    values = [it.gold for it in TASKS.get("arith_mixed_gen")().items(120, seed=0)]
    assert 0 in values and len(set(values)) < len(values)  # questions are distinct, answers need not be


def test_distractors_widen_or_refuse_instead_of_looping():
    import random as _random

    from prunescope.tasks.arithmetic import distractors
    got = distractors(9, _random.Random(0), k=6)
    assert len(set(got)) == 6 and 9 not in got and all(0 <= g <= 9 for g in got)
    assert sorted(distractors(5, _random.Random(1), k=9)) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    with pytest.raises(ValueError):
        distractors(5, _random.Random(1), k=10)  # only nine other one-digit numbers exist
