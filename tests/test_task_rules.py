"""The multiple-choice rules (tasks/rules.py) and chance from the items (tasks/chance.py), checked
against hand-worked items and against a brute-force re-implementation written here."""
from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest

from prunescope.errors import UsageError
from prunescope.tasks.chance import chance_of, gen_strategies, mc_strategies
from prunescope.tasks.rules import FIX, item_problem, token_prefix_problems, validate_items
from prunescope.tasks.spec import Item, Task


def _mc(choices, gold, target=None, id="q"):
    return Item(id=id, prompt="Q:", gold=gold, target=choices[gold] if target is None else target, choices=choices)


# ------------------------------------------------------------------------------------------ rules

@pytest.mark.parametrize("choices, gold, target, expected", [
    (["a", "b"], 0, None, None),
    (["x1", "y22", "z"], 2, None, None),
    (["a"], 0, None, "needs a list of at least 2 choices"),
    (("a", "b"), 0, None, "needs a list of at least 2 choices"),  # a tuple is not a list
    (["a", "a", "b"], 2, None, "has repeated choices ['a', 'a', 'b']"),
    (["a", "b"], 2, "a", "gold 2 is not an index into its 2 choices"),
    (["a", "b"], -1, "a", "gold -1 is not an index into its 2 choices"),
    (["a", "b"], "0", "a", "gold '0' is not an index into its 2 choices"),
    (["a", "b"], 1, "a", "target 'a' is not the gold choice 'b'"),
    ([" 1", " 12"], 1, None, f"choice ' 1' is a prefix of choice ' 12'; {FIX}"),
    # the later choice is the prefix: the pair is still reported shorter-first
    ([") ] }", ") ]"], 0, None, f"choice ') ]' is a prefix of choice ') ] }}'; {FIX}"),
    (["ab", "ba"], 0, None, None),  # same letters, no prefix
])
def test_item_problem(choices, gold, target, expected):
    target = choices[gold] if target is None and isinstance(gold, int) and 0 <= gold < len(choices) else target
    assert item_problem(Item(id="q", prompt="Q:", gold=gold, target=target, choices=choices)) == expected


def test_item_problem_two_choices_are_enough_and_none_is_not():
    assert item_problem(Item(id="q", prompt="", gold=0, target="a", choices=None)) == \
        "needs a list of at least 2 choices"
    assert item_problem(_mc(["no", "yes"], 1)) is None


def _task(kind="multiple_choice", name="rules_t"):
    return Task(name=name, kind=kind, description="t", make_items=lambda n, seed, split: [])


def test_validate_items_names_task_and_item_and_skips_generate():
    good, bad = _mc(["a", "b"], 0, id="ok"), _mc(["1", "12"], 0, id="item7")
    validate_items(_task(), [good])  # no error
    with pytest.raises(UsageError) as err:
        validate_items(_task(), [good, bad, _mc(["a"], 0, id="later")])
    assert str(err.value) == f"task rules_t, item item7: choice '1' is a prefix of choice '12'; {FIX}"
    # generate items have no choices to check
    validate_items(_task("generate"), [Item(id="g", prompt="p", gold="4", target="4")])


class _LowerTokenizer:
    """One token per character, case-folded: "A" and "ab" are no string prefix pair but a token one."""
    bos_token = None
    bos_token_id = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text.lower()]}


def test_token_prefix_problems_use_the_tokens_the_engine_scores():
    tok = _LowerTokenizer()
    items = [_mc(["A", "ab"], 0, id="i0"), _mc(["xy", "z"], 1, id="i1"), _mc(["c", "Dc", "d"], 2, id="i2")]
    assert all(item_problem(it) is None for it in items)  # the strings break no rule
    problems = token_prefix_problems(_task(), items, tok)
    assert problems == [f"task rules_t, item i0: the tokens of choice 'A' are a prefix of those of 'ab'; {FIX}",
                        f"task rules_t, item i2: the tokens of choice 'd' are a prefix of those of 'Dc'; {FIX}"]


def test_token_prefix_problems_split_the_context_like_the_engine():
    """A context's trailing space moves into each continuation (lm-eval): " a" and " ab" are then a prefix
    pair even though the choices "a" / "ab" already are; "b" / "c" stay apart."""
    tok = _LowerTokenizer()
    item = Item(id="s", prompt="Q: ", gold=0, target="b", choices=["b", "c"])
    assert token_prefix_problems(_task(), [item], tok) == []


# ------------------------------------------------------------------------------------------ chance

def _reference_mc(items):
    """Each answer-blind strategy's expected accuracy, item by item, in exact fractions."""
    n = len(items)
    uniform = sum(Fraction(1, len(it.choices)) for it in items) / n
    max_k = max(len(it.choices) for it in items)
    position = max(sum(Fraction(int(it.gold == p)) for it in items) / n for p in range(max_k))
    texts = {c for it in items for c in it.choices}

    def always(a, it):
        if a not in it.choices:
            return Fraction(1, len(it.choices))  # not offered: guess
        return Fraction(int(it.choices[it.gold] == a))

    answer = max(sum(always(a, it) for it in items) / n for a in texts)
    return {"1/k": uniform, "same position": position, "same answer": answer}


def test_mc_chance_by_hand():
    # 4 items; gold at position 0 three times. "7" is gold twice and offered in 3 items.
    items = [_mc(["7", "8"], 0), _mc(["7", "9", "5"], 0), _mc(["1", "2"], 0), _mc(["3", "7", "4", "6"], 1)]
    s = mc_strategies(items)
    assert s["1/k"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1 / 4) / 4)
    assert s["same position"] == pytest.approx(3 / 4)
    # always "7": right on items 0, 1, 3; item 2 does not offer it -> guess 1/2: (3 + 1/2) / 4
    assert s["same answer"] == pytest.approx(3.5 / 4)
    assert chance_of("multiple_choice", items) == (pytest.approx(3.5 / 4), "same answer")


def test_mc_chance_matches_brute_force_on_random_items():
    rng = random.Random(0)
    pool = [str(d) for d in range(6)]
    for trial in range(40):
        items = []
        for _ in range(rng.randint(1, 7)):
            choices = rng.sample(pool, rng.randint(2, 4))
            items.append(_mc(choices, rng.randrange(len(choices))))
        got, ref = mc_strategies(items), _reference_mc(items)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k] == pytest.approx(float(ref[k]), abs=1e-12), (trial, k)
        value, name = chance_of("multiple_choice", items)
        assert value == pytest.approx(float(max(ref.values())), abs=1e-12)
        assert ref[name] == max(ref.values())


def test_chance_ties_prefer_uniform_guessing():
    # balanced positions, both answers once, both offered everywhere: all three strategies give 1/2
    items = [_mc(["a", "b"], 0), _mc(["a", "b"], 1)]
    assert mc_strategies(items) == {"1/k": 0.5, "same position": 0.5, "same answer": 0.5}
    assert chance_of("multiple_choice", items) == (0.5, "1/k")
    # same position (first: 2 of 3) and same answer ("a": 2 of 3) tie above 1/k: the first listed wins
    items = [_mc(["a", "b", "c"], 0), _mc(["b", "a", "c"], 1), _mc(["c", "b", "a"], 0)]
    s = mc_strategies(items)
    assert s["same position"] == pytest.approx(2 / 3) and s["same answer"] == pytest.approx(2 / 3)
    assert chance_of("multiple_choice", items) == (pytest.approx(2 / 3), "same position")


def test_gen_chance_is_the_commonest_answer():
    items = [Item(id=str(i), prompt="p", gold=g, target=str(g)) for i, g in enumerate([4, 4, "4", 7, 4])]
    # 4 (int) three times; the string "4" is another answer (repr differs)
    assert gen_strategies(items) == {"same answer": 3 / 5}
    assert chance_of("generate", items) == (3 / 5, "same answer")


def test_chance_of_nothing_is_zero():
    assert mc_strategies([]) == {} and gen_strategies([]) == {}
    assert chance_of("multiple_choice", []) == (0.0, "none")
    assert chance_of("generate", []) == (0.0, "none")


def test_chance_of_a_fixed_answer_set_is_the_majority_answer():
    # yes/no items, gold "yes" on 7 of 10, positions balanced -> always "yes" reaches 0.7
    items = []
    for i, (order, gold_text) in enumerate(itertools.islice(itertools.cycle(
            [(("yes", "no"), "yes"), (("no", "yes"), "yes"), (("yes", "no"), "no"), (("no", "yes"), "yes")]), 10)):
        items.append(_mc(list(order), order.index(gold_text), id=str(i)))
    n_yes = sum(it.choices[it.gold] == "yes" for it in items)
    assert chance_of("multiple_choice", items) == (pytest.approx(n_yes / 10), "same answer")
