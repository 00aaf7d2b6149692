"""Bracket probes (tasks/brackets.py): closings and balance recomputed here by another algorithm
(cancel adjacent matched pairs until none is left), item by item."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from prunescope.tasks import TASKS
from prunescope.tasks.brackets import (_check, _unbalance, _wrong_closings, closing, draw_open_prefix,
                                       is_balanced)
from prunescope.tasks.spec import Item

CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _reduce(seq):
    """Cancel adjacent ``open close`` pairs of one type until none is left."""
    s = list(seq)
    changed = True
    while changed:
        changed = False
        for i in range(len(s) - 1):
            if s[i] in CLOSE and CLOSE[s[i]] == s[i + 1]:
                del s[i:i + 2]
                changed = True
                break
    return s


def _ref_balanced(seq) -> bool:
    return not _reduce(seq)


def _ref_closing(seq):
    rest = _reduce(seq)
    assert all(b in CLOSE for b in rest), seq  # an open prefix: only openers are left
    return [CLOSE[b] for b in reversed(rest)]


@pytest.mark.parametrize("seq, expected", [
    ("( ( ) (", ") )"), ("[ { < >", "} ]"), ("(", ")"), ("< [ ] ( { } [", "] ) >"),
])
def test_closing_by_hand(seq, expected):
    assert " ".join(closing(seq.split())) == expected


@pytest.mark.parametrize("seq, expected", [
    ("( )", True), ("( [ ] )", True), ("", True), ("( ]", False), (")", False), ("( (", False),
    ("[ ( ] )", False), ("( ) )", False), ("< > { [ ] }", True),
])
def test_is_balanced_by_hand(seq, expected):
    assert is_balanced(seq.split()) is expected


def test_open_prefixes_respect_depth_length_and_types():
    rng = random.Random(0)
    lengths, depths = Counter(), Counter()
    for _ in range(300):
        seq = draw_open_prefix(rng, types="([", max_depth=2, min_len=3, max_len=6)
        assert 3 <= len(seq) <= 6 and set(seq) <= set("([)]") and _ref_closing(seq)
        depth = max_depth = 0
        for b in seq:
            depth += 1 if b in CLOSE else -1
            max_depth = max(max_depth, depth)
        assert 1 <= max_depth <= 2 and depth >= 1
        lengths[len(seq)] += 1
        depths[max_depth] += 1
    assert set(lengths) == {3, 4, 5, 6} and set(depths) == {1, 2}


@pytest.mark.parametrize("name, types, depth", [("brackets", "(", 3), ("brackets4", "([{<", 4)])
def test_generate_and_choice_items_close_the_brackets(name, types, depth):
    gen, mc = TASKS.get(f"{name}_gen")(), TASKS.get(f"{name}_mc")()
    assert gen.pair == mc.name and mc.pair == gen.name and gen.max_new_tokens == 24 and gen.stop == ["\n"]
    n = 4 * depth
    items, mc_items = gen.items(n, seed=2), mc.items(n, seed=2)
    assert [it.id for it in items] == [m.id for m in mc_items]
    for it, m in zip(items, mc_items):
        assert it.prompt == m.prompt
        *shots, last = it.prompt.split("\n")
        assert len(shots) == 5 and last.endswith(" =")
        q = last[:-2].split()
        assert set(q) <= set(types) | {CLOSE[t] for t in types}
        right = " ".join(_ref_closing(q))
        assert it.gold == right and it.target == " " + right
        for shot in shots:
            s, c = shot.split(" = ")
            assert c == " ".join(_ref_closing(s.split()))
        assert m.choices[m.gold] == " " + right + "\n" == m.target
        assert all(ch.endswith("\n") and ch.startswith(" ") for ch in m.choices)
        if len(types) == 1:
            assert m.choices == [" )\n", " ) )\n", " ) ) )\n"]
        else:
            assert len(m.choices) == 4 and len(set(m.choices)) == 4
            assert {len(ch.split()) for ch in m.choices} == {len(right.split())}  # same length as the gold
        assert _check(it, right) and _check(it, "  " + right.replace(" ", "  ") + " ") and not _check(it, right + " )")
    # closing lengths are stratified: each of 1..depth equally often
    assert Counter(len(it.gold.split()) for it in items) == {k: 4 for k in range(1, depth + 1)}


def test_wrong_closings_by_hand():
    reordered = 0
    for seed in range(30):
        rng = random.Random(seed)
        right = ["]", ")", "}"]
        wrong = _wrong_closings(right, rng)
        assert len(wrong) == len(set(wrong)) == 3 and "] ) }" not in wrong
        assert all(len(w.split()) == 3 and set(w.split()) <= set(CLOSE.values()) for w in wrong)
        # the first one is the right brackets in another order (unless that shuffle gave the gold back)
        reordered += sorted(wrong[0].split()) == sorted(right)
        single = _wrong_closings([">"], random.Random(seed))
        assert sorted(single) == [")", "]", "}"]
    assert reordered >= 20  # 5 of 6 shuffles differ from the gold


def test_wrong_closings_of_one_repeated_type_change_types():
    wrong = _wrong_closings([")", ")"], random.Random(0))
    assert len(wrong) == 3 and ") )" not in wrong and all(len(w.split()) == 2 for w in wrong)


def test_unbalance_always_breaks_a_balanced_sequence():
    rng = random.Random(1)
    kinds = Counter()
    for _ in range(200):
        prefix = draw_open_prefix(rng, types="([{<", max_depth=3, min_len=2, max_len=6)
        bal = prefix + closing(prefix)
        bad = _unbalance(bal, rng)
        assert not _ref_balanced(bad)
        kinds[len(bad) - len(bal)] += 1
    assert set(kinds) == {-1, 0, 1}  # a wrong type, one missing, one too many


def test_balanced_items_say_yes_exactly_when_balanced():
    task = TASKS.get("brackets_balanced_mc")()
    items = task.items(20, seed=0)
    assert sum(it.meta["balanced"] for it in items) == 10  # stratified: half balanced
    for it in items:
        *shots, last = it.prompt.split("\n")
        assert len(shots) == 5 and last.endswith(" balanced:")
        ok = _ref_balanced(last[:-len(" balanced:")].split())
        assert it.choices == [" yes\n", " no\n"] and it.gold == (0 if ok else 1) and it.meta["balanced"] is ok
        assert it.target == it.choices[it.gold]
        for shot in shots:
            s, answer = shot.split(" balanced: ")
            assert answer == ("yes" if _ref_balanced(s.split()) else "no")


def test_check_normalises_spaces_only():
    item = Item(id="b", prompt="p", gold=") ]", target=" ) ]")
    assert _check(item, " )  ]\n") and not _check(item, ")]") and not _check(item, ") ] )")


def test_task_specs_and_ids():
    specs = {name: TASKS.get(name)() for name in ("brackets_gen", "brackets4_gen", "brackets_mc", "brackets4_mc",
                                                  "brackets_balanced_mc")}
    assert {n: (t.name, t.kind, t.family) for n, t in specs.items()} == {
        "brackets_gen": ("brackets_gen", "generate", "brackets"),
        "brackets4_gen": ("brackets4_gen", "generate", "brackets4"),
        "brackets_mc": ("brackets_mc", "multiple_choice", "brackets"),
        "brackets4_mc": ("brackets4_mc", "multiple_choice", "brackets4"),
        "brackets_balanced_mc": ("brackets_balanced_mc", "multiple_choice", "brackets_balanced_mc")}
    assert specs["brackets_balanced_mc"].description == "four bracket types: is the sequence balanced? (yes/no)"
    assert specs["brackets4_gen"].description == "four bracket types, depth <= 4: write the closing brackets"
    assert specs["brackets_gen"].check is not None
    assert specs["brackets4_gen"].items(2, seed=7)[1].id == "brackets4-eval-7-1"
    assert specs["brackets_balanced_mc"].items(2, seed=7)[0].id == "brackets_balanced_mc-eval-7-0"
    assert [it.id for it in specs["brackets4_mc"].items(4, seed=7)] == [f"brackets4-eval-7-{i}" for i in range(4)]
    # 4-type closing choices: gold positions balanced over blocks of 4
    assert sorted(it.gold for it in specs["brackets4_mc"].items(8, seed=0)) == [0, 0, 1, 1, 2, 2, 3, 3]
