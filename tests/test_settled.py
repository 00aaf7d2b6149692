"""Generation stops once a task's verdict is decided (``Task.settled``): the verdict must be exactly the one
the whole output would get. Checked by brute force over random outputs and continuations, and end to end
on a tiny model against ``full_outputs=True``."""
from __future__ import annotations

import random

import pytest

from prunescope.eval.engine import truncate_at_stop
from prunescope.eval.runner import evaluate
from prunescope.tasks import get_task

from common import make_tiny_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SETTLED_TASKS = ["arith_add_1d_gen", "arith_add_2d_gen", "arith_sub_2d_gen", "arith_mixed_gen", "brackets_gen",
                 "brackets4_gen"]
ALPHABET = list("0123456789") + [" ", "  ", "-", ",", "\n", "a", "=", ")", "]", "}", ">", "(", ".", "07", "-1"]


def _outputs(item, rng: random.Random, n: int) -> list[str]:
    """Random outputs, half of them starting with the right answer's text (so both verdicts occur)."""
    outs = []
    for j in range(n):
        head = str(item.target) if j % 2 else ""
        outs.append(head + "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 6))))
    return outs


@pytest.mark.parametrize("name", SETTLED_TASKS)
def test_a_settled_verdict_never_changes(name):
    task = get_task(name)
    assert task.settled is not None
    rng = random.Random(name)
    decided = {True: 0, False: 0}
    for item in task.items(25, seed=1):
        for out in _outputs(item, rng, 40):
            for cut in range(len(out) + 1):
                prefix, stopped = truncate_at_stop(out[:cut], task.stop)
                if stopped or not task.settled(item, prefix):
                    continue
                verdict = bool(task.check(item, prefix))
                decided[verdict] += 1
                for _ in range(8):  # any continuation, cut where generation would cut it
                    more = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 8)))
                    whole = truncate_at_stop(prefix + more, task.stop)[0]
                    assert bool(task.check(item, whole)) == verdict, (name, item.gold, prefix, more)
    # not vacuous: wrong answers get decided early, and a complete number is decided right (a bracket answer
    # is only known right at its newline)
    assert decided[False] > 50, decided
    assert decided[True] > 0 or name.startswith("brackets"), decided


def test_settled_fires_where_expected():
    add = get_task("arith_add_1d_gen")
    item = next(it for it in add.items(77, seed=0) if it.gold >= 10)
    assert not add.settled(item, " ")             # nothing yet
    assert not add.settled(item, " 1")            # may still become the answer
    assert add.settled(item, f" {item.gold} ")    # the number is complete: right
    assert add.settled(item, f" {item.gold}0")    # more digits than the answer: wrong
    assert add.settled(item, " x")                # can never start with a number: wrong
    assert not add.settled(item, " -")            # a sign may still be followed by digits
    br = get_task("brackets_gen")
    item = br.items(5, seed=0)[0]
    assert not br.settled(item, " " + item.gold)
    assert br.settled(item, " " + item.gold + " )")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_evaluation_with_early_stop_equals_full_outputs(model_type):
    model, tok = make_tiny_model(model_type, layers=2), make_tokenizer()
    tasks = ["arith_add_1d_gen", "brackets_gen"]
    cut = evaluate(model, tok, tasks, limit=12, seed=0, batch_size=4, progress=False)
    full = evaluate(model, tok, tasks, limit=12, seed=0, batch_size=4, progress=False, full_outputs=True)
    for name in tasks:
        assert cut["tasks"][name]["accuracy"] == full["tasks"][name]["accuracy"]
        assert "degeneration" in full["tasks"][name] and "degeneration" not in cut["tasks"][name]


def test_engine_stops_rows_early_and_keeps_prefixes():
    from prunescope.eval.engine import generate

    model, tok = make_tiny_model("llama", layers=2), make_tokenizer()
    prompts = [f"{a} + {b} =" for a in range(3) for b in range(4)]
    full = generate(model, tok, prompts, max_new_tokens=10, stop=["\n"], batch_size=5)
    short = generate(model, tok, prompts, max_new_tokens=10, stop=["\n"], batch_size=5,
                     settled=lambda i, text: len(text) >= 2 + i % 3)
    for i, (f, s) in enumerate(zip(full, short)):
        assert f.startswith(s)
        assert s == f or len(s) >= 2 + i % 3  # cut only where the predicate said so
    assert sum(map(len, short)) < sum(map(len, full))
