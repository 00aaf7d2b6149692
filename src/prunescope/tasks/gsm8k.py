"""GSM8K grade-school math: the generative reasoning benchmark on which pruned models collapse.

``gsm8k`` generates a worked answer (5-shot; for models with a chat template, the shots are chat turns)
and scores the final number two ways, both reported: *strict* takes the number after ``#### `` (the
GSM8K answer format the shots show), *flexible* takes the last number in the output. ``accuracy`` is
the flexible score, the stricter one is ``strict_accuracy``. The gold is the reference answer's final
number. ``gsm8k_mc`` asks for the same final answer as a four-way choice (distractors with the answer's number
of digits: off by one, off by ten, swapped digits, …; each choice ends with the ``.`` the shots show)
scored by log-likelihood. The pair is *not matched*: generation writes a worked solution through the
chat template, while the multiple choice reads the final answer after "The answer is".

Data: a folder with ``train.jsonl`` and ``test.jsonl``, a single JSONL file, the hub dataset
``openai/gsm8k``, in that order of preference: the ``data=`` argument (``--data``), then the
environment variable ``PRUNESCOPE_GSM8K_DATA``, then the hub. Lines hold ``question`` and ``answer``.
Evaluation items are the test split in its order; calibration items are the train split (shuffled
by the seed) minus the shots and minus any question that also appears in the test split. A single
file is split by question hash, one question in four for calibration.
"""
from __future__ import annotations

import functools
import os
import random
import re
from pathlib import Path

from prunescope.tasks.arithmetic import distractors
from prunescope.tasks.data import load_hub, read_jsonl
from prunescope.tasks.sampling import balanced_position, mc_item, partition_of
from prunescope.tasks.spec import Item, Task, register_task

ENV_VAR = "PRUNESCOPE_GSM8K_DATA"
HUB_ID = "openai/gsm8k"
SHOTS = 5
HOW_TO_FIX = (f"pass --data FILE.jsonl or a folder with train.jsonl/test.jsonl (lines with 'question' and "
              f"'answer'), or set {ENV_VAR}")
_STRICT = re.compile(r"#### *(-?[$0-9.,]+)")
_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?")


def normalise_number(text: str | None) -> str | None:
    """``"$1,234.00"`` -> ``"1234"``; None when ``text`` holds no number."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def strict_answer(output: str) -> str | None:
    """The number after ``#### `` (None when the output has no such line)."""
    m = _STRICT.search(output)
    return normalise_number(m.group(1)) if m else None


def flexible_answer(output: str) -> str | None:
    """The last number anywhere in the output."""
    found = _NUMBER.findall(output)
    return normalise_number(found[-1]) if found else None


def gold_number(answer: str) -> str:
    """The final number of a GSM8K reference answer."""
    return strict_answer(answer) or flexible_answer(answer) or answer.strip()


def clean_solution(answer: str) -> str:
    """The reference solution without the ``<<48/2=24>>`` calculator annotations."""
    return re.sub(r"<<[^>]*>>", "", answer)


def _source(data) -> tuple[str, str | None]:
    data = data if data is not None else os.environ.get(ENV_VAR)
    if data is None:
        return "hub", None
    return "path", str(data)


@functools.lru_cache(maxsize=8)
def load_rows(split: str, data: str | None = None) -> tuple[dict, ...]:
    """GSM8K rows of ``split`` ("train" or "test") from ``data`` (see the module docstring)."""
    kind, path = _source(data)
    if kind == "hub":
        rows = load_hub(HUB_ID, "main", split, how_to_fix=HOW_TO_FIX)
    else:
        p = Path(path)
        if p.is_dir():
            rows = read_jsonl(p / f"{split}.jsonl", required=("question", "answer"))
        else:
            rows = [r for r in read_jsonl(p, required=("question", "answer"))
                    if partition_of("gsm8k", r["question"]) == ("calib" if split == "train" else "eval")]
    return tuple({"question": r["question"], "answer": r["answer"]} for r in rows)


def _split_rows(n: int | None, seed: int, split: str, data) -> tuple[list[dict], list[dict]]:
    """(items' rows, shot rows) for ``split``; calibration never contains a test question or a shot."""
    train = list(load_rows("train", data))
    shots = train[:SHOTS]
    if split == "eval":
        rows = list(load_rows("test", data))
    else:
        test_questions = {r["question"] for r in load_rows("test", data)}
        rows = [r for r in train[SHOTS:] if r["question"] not in test_questions]
        random.Random(f"gsm8k|calib|{seed}").shuffle(rows)
    return (rows if n is None else rows[:n]), shots


def _gen_item(i: int, row: dict, shots: list[dict], split: str) -> Item:
    solution = clean_solution(row["answer"])
    plain = "".join(f"Question: {s['question']}\nAnswer: {clean_solution(s['answer'])}\n\n" for s in shots)
    messages = []
    for s in shots:
        messages += [{"role": "user", "content": s["question"]},
                     {"role": "assistant", "content": clean_solution(s["answer"])}]
    messages.append({"role": "user", "content": row["question"]})
    return Item(id=f"gsm8k-{split}-{i}", prompt=plain + f"Question: {row['question']}\nAnswer:",
                gold=gold_number(row["answer"]), target=" " + solution,
                meta={"messages": messages, "question": row["question"]})


def _check(item: Item, output: str) -> bool:
    return flexible_answer(output) == item.gold


def _extra(items: list[Item], outputs: list[str]) -> dict:
    from prunescope.eval.metrics import proportion

    strict = [strict_answer(o) == it.gold for it, o in zip(items, outputs)]
    flexible = [flexible_answer(o) == it.gold for it, o in zip(items, outputs)]
    return {"strict_accuracy": proportion(strict), "flexible_accuracy": proportion(flexible)}


def gsm8k_task(data: str | Path | None = None) -> Task:
    """The GSM8K generate task reading from ``data`` (folder, file, or None for env var / hub)."""
    data = None if data is None else str(data)

    def make(n, seed, split):
        rows, shots = _split_rows(n, seed, split, data)
        return [_gen_item(i, r, shots, split) for i, r in enumerate(rows)]
    return Task(name="gsm8k", kind="generate", make_items=make, use_chat_template=True,
                stop=["Question:", "\n\n\n"], max_new_tokens=256, check=_check, extra_metrics=_extra,
                family="gsm8k", pair="gsm8k_mc", matched=False,
                description="grade-school math, 5-shot, generate; strict (#### N) and flexible (last number)")


def gsm8k_mc_task(data: str | Path | None = None) -> Task:
    """GSM8K as a four-way choice of the final answer."""
    data = None if data is None else str(data)

    def make(n, seed, split):
        rows, shots = _split_rows(n, seed, split, data)
        context = "".join(f"Question: {s['question']}\nAnswer: The answer is {gold_number(s['answer'])}.\n\n"
                          for s in shots)
        items = []
        for i, r in enumerate(rows):
            gold = gold_number(r["answer"])
            rng = random.Random(f"gsm8k_mc|{split}|{seed}|{i}")
            value = int(float(gold)) if normalise_number(gold) == gold and "." not in gold else None
            # Negative or fractional answers: written like the gold (-4, not -4.0), or the format gives it away.
            wrong = [str(w) for w in distractors(value, rng)] if value is not None and value >= 0 else \
                [normalise_number(str(float(gold) + d)) for d in (1, -1, 10)]
            items.append(mc_item(id=f"gsm8k_mc-{split}-{i}", prompt=context + f"Question: {r['question']}\n"
                                 "Answer: The answer is", gold_text=gold, distractors=wrong, rng=rng,
                                 fmt=lambda s: f" {s}.", position=balanced_position("gsm8k", seed, split, i, 4),
                                 meta={"question": r["question"]}))
        return items
    return Task(name="gsm8k_mc", kind="multiple_choice", make_items=make, family="gsm8k", pair="gsm8k", matched=False,
                description="grade-school math, 5-shot: pick the final answer among 4")


register_task("gsm8k")(gsm8k_task)
register_task("gsm8k_mc")(gsm8k_mc_task)
