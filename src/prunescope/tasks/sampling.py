"""Deterministic item sampling with disjoint evaluation and calibration splits.

Every question has a *key* (the bare question text, shots excluded). A stable hash of the key puts
one question in four into the ``calib`` partition and the rest into ``eval``. The partition depends
only on the key, never on the seed or on how many items are asked for, so calibration items (used by
layer-scoring criteria and recovery) can never coincide with evaluation items, and few-shot examples
are drawn from the item's own partition so evaluation questions never leak into calibration prompts.

Evaluation questions never repeat: a family whose pool is smaller than the number asked for (1-digit
sums have 100 questions, 77 of them in ``eval``) yields its whole pool, with a one-line notice.
Item ``i``'s shots come from a random stream of its own (family, split, seed, i), and multiple-choice
distractors from another, so the ``_gen`` and ``_mc`` tasks of one family render the same context
for the same item id: only the way the answer is read differs.
"""
from __future__ import annotations

import hashlib
import random
import sys
from typing import Any, Callable

from prunescope.tasks.spec import Item

CALIB_EVERY = 4  # one question in four belongs to the calibration partition
EXHAUSTED_AFTER = 3000  # consecutive repeated draws after which a question pool counts as used up
_noticed: set[tuple] = set()


def partition_of(family: str, key: str) -> str:
    """``"calib"`` or ``"eval"``: the split that question ``key`` of ``family`` belongs to."""
    digest = hashlib.sha256(f"{family}\x00{key}".encode()).digest()
    return "calib" if int.from_bytes(digest[:8], "big") % CALIB_EVERY == 0 else "eval"


def rng_for(family: str, seed: int, split: str, *extra: Any) -> random.Random:
    """A random stream of its own for each (family, seed, split[, extra…])."""
    return random.Random("|".join(map(str, (family, split, seed, *extra))))


def notice(message: str) -> None:
    """Print a one-line notice to stderr, once per message."""
    if message not in _noticed:
        _noticed.add(message)
        print(f"prunescope: {message}", file=sys.stderr)


def sample_questions(draw: Callable[[random.Random], Any], key: Callable[[Any], str], *, family: str, n: int,
                     seed: int, split: str, exclude: set[str] = frozenset(), task: str = "",
                     stratum: Callable[[Any], int] | None = None, strata: int = 1) -> list:
    """Up to ``n`` distinct questions drawn by ``draw`` that belong to ``split``.

    With ``stratum`` (a question's class among ``strata``, e.g. how many brackets close it), every block
    of ``strata`` consecutive questions holds one of each class, so no class is the majority. When
    ``EXHAUSTED_AFTER`` draws in a row bring nothing new, the pool is used up: evaluation questions
    found so far are returned (a prefix of what a larger ``n`` returns) with a one-line notice;
    calibration questions (criteria, recovery prompts) go on with repeats, their shots differing.
    """
    rng = rng_for(family, seed, split)
    questions: list = []
    seen: set[str] = set(exclude)
    misses, repeat = 0, False
    while len(questions) < n:
        want = None if stratum is None else balanced_position(family, seed, split, len(questions), strata)
        q = draw(rng)
        k = key(q)
        if (k in seen and not repeat) or partition_of(family, k) != split or (want is not None and stratum(q) != want):
            misses += 1
            if misses >= EXHAUSTED_AFTER:
                if split != "eval":  # calibration and training prompts may repeat (their shots differ)
                    repeat, misses = True, 0
                    continue
                notice(f"{task or family}: only {len(questions)} distinct {split} questions exist; "
                       f"n capped at {len(questions)} (asked for {n})")
                break
            continue
        misses = 0
        seen.add(k)
        questions.append(q)
    return questions


def draw_shots(rng: random.Random, draw: Callable[[random.Random], Any], key: Callable[[Any], str], *,
               family: str, split: str, k: int, avoid: str) -> list:
    """``k`` distinct few-shot questions from ``split``'s partition, never the question ``avoid``."""
    shots, keys, tries = [], {avoid}, 0
    while len(shots) < k:
        q = draw(rng)
        kq = key(q)
        if partition_of(family, kq) != split:
            continue
        if kq in keys and tries < 200:
            tries += 1
            continue
        keys.add(kq)
        shots.append(q)
    return shots


def synthetic_items(*, family: str, n: int | None, seed: int, split: str, draw: Callable[[random.Random], Any],
                    key: Callable[[Any], str], build: Callable[[Any, list, random.Random, int], Item],
                    shots: int, default_n: int = 200, task: str = "", stratum: Callable[[Any], int] | None = None,
                    strata: int = 1) -> list[Item]:
    """Items for a generated task: ``build(question, shot_questions, rng, index)`` makes each Item.

    The shots of item ``i`` depend only on (family, seed, split, i), and ``rng`` handed to ``build`` is a
    stream of its own for that item, so tasks of one family share items, ids and contexts."""
    n = default_n if n is None else n
    questions = sample_questions(draw, key, family=family, n=n, seed=seed, split=split, task=task,
                                 stratum=stratum, strata=strata)
    items = []
    for i, q in enumerate(questions):
        shot_qs = draw_shots(rng_for(family, seed, split, "shots", i), draw, key, family=family, split=split,
                             k=shots, avoid=key(q))
        item = build(q, shot_qs, rng_for(family, seed, split, "choices", i), i)
        item.meta.setdefault("key", key(q))
        item.meta.setdefault("split", split)
        items.append(item)
    return items


def item_id(family: str, split: str, seed: int, i: int) -> str:
    """The id item ``i`` carries in every task of ``family`` (matched pairs share ids)."""
    return f"{family}-{split}-{seed}-{i}"


def balanced_position(family: str, seed: int, split: str, i: int, k: int) -> int:
    """Where the gold answer of item ``i`` goes among ``k`` choices: every block of ``k`` consecutive
    items puts it once at each position (in a random order), so "always the same position" scores
    1/k up to one block's rounding."""
    order = list(range(k))
    rng_for(family, seed, split, "position", i // k).shuffle(order)
    return order[i % k]


def mc_item(*, id: str, prompt: str, gold_text: str, distractors: list[str], rng: random.Random,
            fmt: Callable[[str], str] = lambda s: " " + s + "\n", meta: dict | None = None,
            position: int | None = None) -> Item:
    """A multiple-choice Item: the gold answer at ``position`` (random when None) among ``distractors``.

    Choices end with ``fmt``'s terminator (by default the newline that ends every few-shot line), so
    that no answer is a prefix of another (`` 1\\n`` vs `` 12\\n``) and the model must commit to where
    the answer ends, as generation does."""
    options = list(distractors)
    rng.shuffle(options)
    pos = rng.randrange(len(options) + 1) if position is None else position
    options.insert(pos, gold_text)
    choices = [fmt(o) for o in options]
    return Item(id=id, prompt=prompt, gold=pos, target=choices[pos], choices=choices, meta=dict(meta or {}))
