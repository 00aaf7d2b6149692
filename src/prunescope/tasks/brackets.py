"""Bracket probes: emitting balanced brackets is the other skill that pruning breaks (it is what turns
pruned models' code into ``'(' was never closed``).

* ``brackets_gen`` / ``brackets_mc`` — one bracket type, depth <= 3: ``( ( ) (`` -> ``) )``, exact match;
  or pick it among the three possible closings `` )``, `` ) )``, `` ) ) )`` (a fixed set, like the
  ten digits of the first-digit probe: chance is the share of the commonest closing, about a third,
  since every closing length is drawn equally often).
* ``brackets4_gen`` / ``brackets4_mc`` — the four types ``() [] {} <>``, depth <= 4: write the closing
  sequence, or pick it among four of the same length (distractors: a bracket of the wrong type, two
  of them, the right brackets in the wrong order).
* ``brackets_balanced_mc`` — is a sequence over the four types balanced? (`` yes`` / `` no``).

Each ``_mc`` task shows the same items (ids, shots, context) as its ``_gen`` partner; every choice ends
with the newline that ends each shot, where generation stops too. Brackets are separated by spaces so
that every tokenizer sees one bracket per token.
"""
from __future__ import annotations

import random

from prunescope.tasks.sampling import balanced_position, item_id, mc_item, synthetic_items
from prunescope.tasks.spec import Item, Task, register_task

PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
SHOTS = 5


def draw_open_prefix(rng: random.Random, *, types: str, max_depth: int, min_len: int = 2, max_len: int = 8) -> list[str]:
    """A random prefix of a Dyck word that still has brackets open (depth 1..``max_depth``)."""
    while True:
        length = rng.randint(min_len, max_len)
        seq, stack = [], []
        for _ in range(length):
            can_open = len(stack) < max_depth
            if stack and (not can_open or rng.random() < 0.45):
                seq.append(PAIRS[stack.pop()])
            else:
                b = rng.choice(types)
                stack.append(b)
                seq.append(b)
        if stack:
            return seq


def closing(seq: list[str]) -> list[str]:
    """The brackets that close every bracket still open in ``seq``, innermost first."""
    stack = []
    for b in seq:
        if b in PAIRS:
            stack.append(b)
        else:
            stack.pop()
    return [PAIRS[b] for b in reversed(stack)]


def is_balanced(seq: list[str]) -> bool:
    """True when every bracket in ``seq`` is closed by its own type, in order."""
    stack = []
    for b in seq:
        if b in PAIRS:
            stack.append(b)
        elif not stack or PAIRS[stack.pop()] != b:
            return False
    return not stack


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _check(item: Item, output: str) -> bool:
    return _normalise(output) == item.gold


def _settled(item: Item, output: str) -> bool:
    """Whether the output is already longer than the answer once whitespace is collapsed: more text never
    makes the collapsed string shorter, so the output can no longer equal the answer."""
    return len(_normalise(output)) > len(item.gold)


def _shot_line(seq) -> str:
    return f"{' '.join(seq)} = {' '.join(closing(seq))}\n"


def _draw(types: str, depth: int):
    def draw(rng):
        return tuple(draw_open_prefix(rng, types=types, max_depth=depth, max_len=12))
    return draw


def _items(name: str, family: str, types: str, depth: int, n, seed, split, build_choices=None):
    """Items of ``family``: the gen task's when ``build_choices`` is None, else multiple choice on the
    same questions, shots and ids."""
    def build(q, shots, rng, i):
        right = closing(q)
        target = " ".join(right)
        prompt = "".join(_shot_line(s) for s in shots) + f"{' '.join(q)} ="
        if build_choices is None:
            return Item(id=item_id(family, split, seed, i), prompt=prompt, gold=target, target=" " + target)
        return build_choices(right, prompt, rng, i)
    # Stratified by closing length (1..depth, each equally often), so no length is the majority answer.
    return synthetic_items(family=family, n=n, seed=seed, split=split, draw=_draw(types, depth),
                           key=" ".join, build=build, shots=SHOTS, task=name,
                           stratum=lambda q: len(closing(q)) - 1, strata=depth)


def _gen(name: str, types: str, depth: int, description: str) -> Task:
    family = name.replace("_gen", "")

    def make(n, seed, split):
        return _items(name, family, types, depth, n, seed, split)
    return Task(name=name, kind="generate", description=description, make_items=make, check=_check, settled=_settled,
                stop=["\n"], max_new_tokens=24, family=family, pair=family + "_mc")


def _wrong_closings(right: list[str], rng: random.Random) -> list[str]:
    """Three wrong closing sequences of the gold's length: one bracket of the wrong type, two of them,
    the right brackets in another order."""
    gold = " ".join(right)
    cands: list[str] = []
    if len(right) > 1:
        order = list(right)
        for _ in range(10):
            rng.shuffle(order)
            cands.append(" ".join(order))
    for _ in range(30):
        wrong = list(right)
        for i in rng.sample(range(len(right)), min(len(right), rng.choice((1, 1, 2)))):
            wrong[i] = rng.choice([c for c in PAIRS.values() if c != right[i]])
        cands.append(" ".join(wrong))
    for other in PAIRS.values():  # top-up, so that even a single bracket has three wrong ones
        cands.append(" ".join([other] + right[1:]))
    picked: list[str] = []
    for text in cands[:1] + cands[10:] if len(right) > 1 else cands:
        if len(picked) < 3 and text != gold and text not in picked:
            picked.append(text)
    return picked


def _closing_mc(name: str, family: str, types: str, depth: int, description: str) -> Task:
    """Pick the closing sequence; the items are ``<family>_gen``'s, so recognition and generation of one
    skill are measured on matched items."""
    def make(n, seed, split):
        def build_choices(right, prompt, rng, i):
            if len(types) == 1:  # one type: every closing of 1..depth brackets, in order, a fixed set
                choices = [" " + " ".join(right[:1] * m) + "\n" for m in range(1, depth + 1)]
                return Item(id=item_id(family, split, seed, i), prompt=prompt, gold=len(right) - 1,
                            target=choices[len(right) - 1], choices=choices)
            return mc_item(id=item_id(family, split, seed, i), prompt=prompt, gold_text=" ".join(right),
                           distractors=_wrong_closings(right, rng), rng=rng,
                           position=balanced_position(family, seed, split, i, 4))
        return _items(name, family, types, depth, n, seed, split, build_choices)
    return Task(name=name, kind="multiple_choice", make_items=make, family=family, description=description,
                pair=family + "_gen")


def _unbalance(seq: list[str], rng: random.Random) -> list[str]:
    seq = list(seq)
    how = rng.randrange(3)
    if how == 0:  # a closing bracket of the wrong type
        idx = [i for i, b in enumerate(seq) if b not in PAIRS]
        i = rng.choice(idx)
        seq[i] = rng.choice([c for c in PAIRS.values() if c != seq[i]])
    elif how == 1:  # one bracket missing
        del seq[rng.randrange(len(seq))]
    else:  # one bracket too many
        seq.insert(rng.randrange(len(seq) + 1), rng.choice(list(PAIRS) + list(PAIRS.values())))
    return seq


def _brackets_balanced_mc() -> Task:
    name = family = "brackets_balanced_mc"

    def draw(rng):
        prefix = draw_open_prefix(rng, types="([{<", max_depth=3, min_len=2, max_len=6)
        balanced = prefix + closing(prefix)
        seq = balanced if rng.random() < 0.5 else _unbalance(balanced, rng)
        return tuple(seq)

    def line(seq) -> str:
        return f"{' '.join(seq)} balanced: {'yes' if is_balanced(list(seq)) else 'no'}\n"

    def make(n, seed, split):
        def build(q, shots, rng, i):
            prompt = "".join(line(s) for s in shots) + f"{' '.join(q)} balanced:"
            gold = 0 if is_balanced(list(q)) else 1
            choices = [" yes\n", " no\n"]
            return Item(id=item_id(family, split, seed, i), prompt=prompt, gold=gold, target=choices[gold],
                        choices=choices, meta={"balanced": gold == 0})
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=draw, key=" ".join, build=build,
                               shots=SHOTS, task=name, stratum=lambda q: int(not is_balanced(list(q))), strata=2)
    return Task(name=name, kind="multiple_choice", make_items=make, family=family,
                description="four bracket types: is the sequence balanced? (yes/no)")


register_task("brackets_gen")(lambda: _gen("brackets_gen", "(", 3, "one bracket type, depth <= 3: write the closing brackets"))
register_task("brackets4_gen")(lambda: _gen("brackets4_gen", "([{<", 4, "four bracket types, depth <= 4: write the closing brackets"))
register_task("brackets_mc")(lambda: _closing_mc("brackets_mc", "brackets", "(", 3,
                                                  "one bracket type, depth <= 3: pick the closing brackets among 4"))
register_task("brackets4_mc")(lambda: _closing_mc("brackets4_mc", "brackets4", "([{<", 4,
                                                  "four bracket types, depth <= 4: pick the closing sequence among 4"))
register_task("brackets_balanced_mc")(_brackets_balanced_mc)
