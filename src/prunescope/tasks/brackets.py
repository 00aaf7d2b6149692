"""Bracket probes: emitting balanced brackets is the other skill that pruning breaks (it is what turns
pruned models' code into ``'(' was never closed``).

* ``brackets_gen`` / ``brackets_mc`` — one bracket type, depth <= 3: ``( ( ) (`` -> ``) )``, exact match;
  or pick it among four closings of the wrong length (same questions as ``brackets_gen``).
* ``brackets4_gen`` / ``brackets4_mc`` — the four types ``() [] {} <>``, depth <= 4: write the closing
  sequence, or pick it among four (distractors: one bracket of the wrong type, the right brackets in the
  wrong order, one bracket missing, one too many).
* ``brackets_balanced_mc`` — is a sequence over the four types balanced? (`` yes`` / `` no``, chance 0.5).

Brackets are separated by spaces so that every tokenizer sees one bracket per token.
"""
from __future__ import annotations

import random

from prunescope.tasks.sampling import mc_item, synthetic_items
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


def _shot_line(seq) -> str:
    return f"{' '.join(seq)} = {' '.join(closing(seq))}\n"


def _gen(name: str, types: str, depth: int, description: str) -> Task:
    def draw(rng):
        return tuple(draw_open_prefix(rng, types=types, max_depth=depth))

    def make(n, seed, split):
        def build(q, shots, rng, i):
            target = " ".join(closing(q))
            prompt = "".join(_shot_line(s) for s in shots) + f"{' '.join(q)} ="
            return Item(id=f"{name}-{split}-{seed}-{i}", prompt=prompt, gold=target, target=" " + target)
        return synthetic_items(family=name.replace("_gen", ""), n=n, seed=seed, split=split, draw=draw,
                               key=" ".join, build=build, shots=SHOTS)
    return Task(name=name, kind="generate", description=description, chance=0.0, make_items=make, check=_check,
                stop=["\n"], max_new_tokens=24, family=name.replace("_gen", ""))


def _wrong_closings(right: list[str], rng: random.Random) -> list[str]:
    """Three wrong closing sequences: one with a bracket of the wrong type, then structural mistakes
    (right brackets in the wrong order, one missing, one too many), topped up with more wrong types."""
    gold = " ".join(right)
    typed, structural = [], []
    for _ in range(30):
        i = rng.randrange(len(right))
        other = rng.choice([c for c in PAIRS.values() if c != right[i]])
        typed.append(" ".join(right[:i] + [other] + right[i + 1:]))
    structural += [" ".join(reversed(right)), " ".join(right[:-1]), " ".join(right + [rng.choice(list(PAIRS.values()))])]
    structural = [s for s in structural if s and s != gold]
    rng.shuffle(structural)
    picked: list[str] = []
    for text in typed[:1] + structural[:2] + typed[1:] + structural[2:]:
        if len(picked) < 3 and text != gold and text not in picked:
            picked.append(text)
    return picked


def _wrong_lengths(right: list[str], rng: random.Random) -> list[str]:
    """Three wrong closings for a single bracket type: too few or too many closing brackets."""
    close = right[0]
    options = [n for n in range(max(1, len(right) - 2), len(right) + 3) if n != len(right)]
    rng.shuffle(options)
    return [" ".join([close] * n) for n in options[:3]]


def _closing_mc(name: str, family: str, types: str, depth: int, description: str) -> Task:
    """Pick the closing sequence among four; the questions are the same as ``<family>_gen``'s, so
    recognition and generation of one skill are measured on matched items."""
    wrong = _wrong_closings if len(types) > 1 else _wrong_lengths

    def draw(rng):
        return tuple(draw_open_prefix(rng, types=types, max_depth=depth))

    def make(n, seed, split):
        def build(q, shots, rng, i):
            right = closing(q)
            prompt = "".join(_shot_line(s) for s in shots) + f"{' '.join(q)} ="
            return mc_item(id=f"{name}-{split}-{seed}-{i}", prompt=prompt, gold_text=" ".join(right),
                           distractors=wrong(right, rng), rng=rng)
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=draw, key=" ".join, build=build,
                               shots=SHOTS)
    return Task(name=name, kind="multiple_choice", chance=0.25, make_items=make, family=family,
                description=description)


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
            choices = [" yes", " no"]
            return Item(id=f"{name}-{split}-{seed}-{i}", prompt=prompt, gold=gold, target=choices[gold],
                        choices=choices, meta={"balanced": gold == 0})
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=draw, key=" ".join, build=build,
                               shots=SHOTS)
    return Task(name=name, kind="multiple_choice", chance=0.5, make_items=make, family=family,
                description="four bracket types: is the sequence balanced? (yes/no)")


register_task("brackets_gen")(lambda: _gen("brackets_gen", "(", 3, "one bracket type, depth <= 3: write the closing brackets"))
register_task("brackets4_gen")(lambda: _gen("brackets4_gen", "([{<", 4, "four bracket types, depth <= 4: write the closing brackets"))
register_task("brackets_mc")(lambda: _closing_mc("brackets_mc", "brackets", "(", 3,
                                                  "one bracket type, depth <= 3: pick the closing brackets among 4"))
register_task("brackets4_mc")(lambda: _closing_mc("brackets4_mc", "brackets4", "([{<", 4,
                                                  "four bracket types, depth <= 4: pick the closing sequence among 4"))
register_task("brackets_balanced_mc")(_brackets_balanced_mc)
