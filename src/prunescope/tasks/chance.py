"""Chance computed from the items: the best accuracy an answer-blind strategy reaches on them.

A typed constant ("4 choices, so 25%") is wrong whenever the items are not balanced: if the gold sits
first in 31% of items, answering "first" scores 31% without reading the question. The strategies,
each scored on the task's own items (expected accuracy, ties broken uniformly):

* ``1/k`` — guess uniformly: the mean of 1/(number of choices);
* ``same position`` — always the choice at one position (the best position on these items);
* ``same answer`` — always one answer text when it is offered, else guess (the best text). For a
  fixed set of choices (the ten digits of the first-digit probe, yes/no) this is the majority answer;
* generation: ``same answer`` — always write the most frequent gold answer.

Chance is the largest of them, reported with the strategy that reaches it. Length heuristics are not
part of chance: a length cue is an artifact of the task, found by ``prunescope tasks --check``.
"""
from __future__ import annotations

from collections import Counter, defaultdict


def _answer_key(gold) -> str:
    return repr(gold)


def mc_strategies(items) -> dict[str, float]:
    """Expected accuracy of each answer-blind strategy on multiple-choice ``items``."""
    n = len(items)
    if not n:
        return {}
    out = {"1/k": sum(1 / len(it.choices) for it in items) / n}
    positions = Counter(it.gold for it in items)
    out["same position"] = max(positions.values()) / n
    # "always text a when offered, else guess": right on items whose gold is a, 1/k where a is absent.
    gold_count: Counter = Counter(it.choices[it.gold] for it in items)
    absent_share: dict[str, float] = defaultdict(float)  # sum of 1/k over items NOT offering a
    total_guess = sum(1 / len(it.choices) for it in items)
    offered_guess: dict[str, float] = defaultdict(float)
    for it in items:
        for c in set(it.choices):
            offered_guess[c] += 1 / len(it.choices)
    for c in offered_guess:
        absent_share[c] = total_guess - offered_guess[c]
    out["same answer"] = max((gold_count[c] + absent_share[c]) / n for c in offered_guess)
    return out


def gen_strategies(items) -> dict[str, float]:
    """Expected accuracy of answer-blind strategies on generate ``items``: always the commonest answer."""
    if not items:
        return {}
    counts = Counter(_answer_key(it.gold) for it in items)
    return {"same answer": max(counts.values()) / len(items)}


def chance_of(kind: str, items) -> tuple[float, str]:
    """(chance, strategy): the best answer-blind accuracy on ``items`` and the strategy reaching it."""
    strategies = mc_strategies(items) if kind == "multiple_choice" else gen_strategies(items)
    if not strategies:
        return 0.0, "none"
    name = max(strategies, key=lambda k: (strategies[k], k == "1/k"))
    return strategies[name], name


def adds_bos(tokenizer) -> bool | None:
    """Whether ``tokenizer`` puts a BOS token before a plain text (None without a tokenizer). Built-in
    probes (prunescope's engine) and lm-eval tasks (its HF backend with ``add_bos_token`` unset) both
    encode with the tokenizer's own special tokens, so this one flag describes both; it is recorded as
    ``bos`` in metrics.json."""
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None:
        return None if tokenizer is None else False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
