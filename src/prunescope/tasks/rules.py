"""The rules every multiple-choice item obeys, checked when items are built.

A choice's log-likelihood can only fall as tokens are added, so a choice that is a prefix of another
(`` 1`` vs `` 12``, ``) ]`` vs ``) ] }``) can never lose to it: the longer one could never win, whatever
the model. Items therefore must have

* at least two distinct choices, none a string prefix of another (nor, given a tokenizer, a token
  prefix of another as the engine splits context and continuation);
* a gold index into the choices, and ``target`` equal to the gold choice (the continuation scored).

Length cues are statistical, not per item: ``prunescope tasks --check`` (tasks/audit.py) measures
them with a uniform null model and the always-longest / always-shortest heuristics.
"""
from __future__ import annotations

from typing import Sequence

from prunescope.errors import UsageError

FIX = ("end every choice with a terminator the few-shot lines also show (e.g. '\\n'), "
       "or use distractors of the gold's length")


def _prefix_pair(seqs: Sequence[Sequence]) -> tuple[int, int] | None:
    """(i, j) with ``seqs[i]`` a proper prefix of ``seqs[j]``, or None."""
    for i, a in enumerate(seqs):
        for j, b in enumerate(seqs):
            if i != j and len(a) < len(b) and list(b[:len(a)]) == list(a):
                return i, j
    return None


def item_problem(item) -> str | None:
    """What is wrong with one multiple-choice item (None when it follows the rules)."""
    choices = item.choices
    if not isinstance(choices, list) or len(choices) < 2:
        return "needs a list of at least 2 choices"
    if len(set(choices)) != len(choices):
        return f"has repeated choices {choices!r}"
    if not isinstance(item.gold, int) or not 0 <= item.gold < len(choices):
        return f"gold {item.gold!r} is not an index into its {len(choices)} choices"
    if item.target != choices[item.gold]:
        return f"target {item.target!r} is not the gold choice {choices[item.gold]!r}"
    pair = _prefix_pair(choices)
    if pair:
        return f"choice {choices[pair[0]]!r} is a prefix of choice {choices[pair[1]]!r}; {FIX}"
    return None


def validate_items(task, items) -> None:
    """Raise a UsageError naming ``task`` and the first item that breaks the multiple-choice rules."""
    if task.kind != "multiple_choice":
        return
    for item in items:
        problem = item_problem(item)
        if problem:
            raise UsageError(f"task {task.name}, item {item.id}: {problem}")


def token_prefix_problems(task, items, tokenizer) -> list[str]:
    """One message per item in which a choice's continuation tokens (as the engine splits them from the
    rendered context) are a prefix of another choice's."""
    from prunescope.eval.engine import encode_pair

    problems = []
    for item in items:
        context = task.render(item, tokenizer)
        conts = [encode_pair(tokenizer, context, c)[1] for c in item.choices]
        pair = _prefix_pair(conts)
        if pair:
            problems.append(f"task {task.name}, item {item.id}: the tokens of choice {item.choices[pair[0]]!r} "
                            f"are a prefix of those of {item.choices[pair[1]]!r}; {FIX}")
    return problems
