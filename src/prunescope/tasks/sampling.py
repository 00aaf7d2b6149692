"""Deterministic item sampling with disjoint evaluation and calibration splits.

Every question has a *key* (the bare question text, shots excluded). A stable hash of the key puts
one question in four into the ``calib`` partition and the rest into ``eval``. The partition depends
only on the key, never on the seed or on how many items are asked for, so calibration items (used by
layer-scoring criteria and recovery) can never coincide with evaluation items, and few-shot examples
are drawn from the item's own partition so evaluation questions never leak into calibration prompts.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

from prunescope.tasks.spec import Item

CALIB_EVERY = 4  # one question in four belongs to the calibration partition


def partition_of(family: str, key: str) -> str:
    """``"calib"`` or ``"eval"``: the split that question ``key`` of ``family`` belongs to."""
    digest = hashlib.sha256(f"{family}\x00{key}".encode()).digest()
    return "calib" if int.from_bytes(digest[:8], "big") % CALIB_EVERY == 0 else "eval"


def rng_for(family: str, seed: int, split: str) -> random.Random:
    """A random stream of its own for each (family, seed, split)."""
    return random.Random(f"{family}|{split}|{seed}")


def sample_questions(draw: Callable[[random.Random], Any], key: Callable[[Any], str], *, family: str, n: int,
                     seed: int, split: str, exclude: set[str] = frozenset(), max_tries: int = 200) -> tuple[list, random.Random]:
    """``n`` questions drawn by ``draw`` that belong to ``split``, unique while the space allows.

    Small spaces (1-digit sums have 100 questions) run out of unique questions; then questions repeat
    (their few-shot examples differ). Returns the questions and the random stream, for the shots.
    """
    rng = rng_for(family, seed, split)
    questions: list = []
    seen: set[str] = set(exclude)
    tries = 0
    while len(questions) < n:
        q = draw(rng)
        k = key(q)
        if partition_of(family, k) != split:
            continue
        if k in seen and tries < max_tries:
            tries += 1
            continue
        tries = 0
        seen.add(k)
        questions.append(q)
    return questions, rng


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
                    shots: int, default_n: int = 200) -> list[Item]:
    """Items for a generated task: ``build(question, shot_questions, rng, index)`` makes each Item."""
    n = default_n if n is None else n
    questions, rng = sample_questions(draw, key, family=family, n=n, seed=seed, split=split)
    items = []
    for i, q in enumerate(questions):
        shot_qs = draw_shots(rng, draw, key, family=family, split=split, k=shots, avoid=key(q))
        item = build(q, shot_qs, rng, i)
        item.meta.setdefault("key", key(q))
        item.meta.setdefault("split", split)
        items.append(item)
    return items


def mc_item(*, id: str, prompt: str, gold_text: str, distractors: list[str], rng: random.Random,
            fmt: Callable[[str], str] = lambda s: " " + s, meta: dict | None = None) -> Item:
    """A multiple-choice Item with the gold answer shuffled among ``distractors``."""
    options = [gold_text, *distractors]
    rng.shuffle(options)
    choices = [fmt(o) for o in options]
    gold = options.index(gold_text)
    return Item(id=id, prompt=prompt, gold=gold, target=choices[gold], choices=choices, meta=dict(meta or {}))
