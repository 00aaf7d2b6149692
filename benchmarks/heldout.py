"""Held-out benchmark items, written at benchmark time as user-task files (``prunescope.tasks.user``).

The items are not the repository's tasks: everyday-knowledge questions (capitals, opposites, days,
months, plurals, colours, animal sounds, units) drawn with a seeded generator, four choices from the
same category, none a prefix of another; the first rows become the few-shot block. ``task_from``
turns any ``--items FILE`` into a Task: a user-task YAML as is, or a JSONL with the field names
given on the command line.
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Kenya": "Nairobi",
            "Peru": "Lima", "Canada": "Ottawa", "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw",
            "Portugal": "Lisbon", "China": "Beijing", "Cuba": "Havana", "Sweden": "Stockholm", "Chile": "Santiago"}
OPPOSITES = {"hot": "cold", "tall": "short", "fast": "slow", "happy": "sad", "heavy": "light", "early": "late",
             "wet": "dry", "loud": "quiet", "rich": "poor", "open": "closed", "full": "empty", "young": "old",
             "hard": "soft", "thick": "thin", "strong": "weak", "clean": "dirty", "high": "low", "cheap": "expensive"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
           "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
           "box": "boxes", "city": "cities", "baby": "babies", "ox": "oxen", "cactus": "cacti"}
COLOURS = {"grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown"}
SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "lion": "roars", "duck": "quacks", "sheep": "bleats",
          "horse": "neighs", "snake": "hisses", "owl": "hoots", "bee": "buzzes"}
UNITS = {"hours in a day": "twenty-four", "days in a week": "seven", "months in a year": "twelve",
         "minutes in an hour": "sixty", "legs on a spider": "eight", "sides on a triangle": "three",
         "wheels on a bicycle": "two", "legs on a dog": "four", "sides on a hexagon": "six"}


def _distinct(answer: str, pool: list[str], rng: random.Random, k: int = 3) -> list[str]:
    """``k`` distractors from ``pool``: none equal to, a prefix of, or prefixed by another choice."""
    chosen = [answer]
    for cand in rng.sample(pool, len(pool)):
        if all(not a.startswith(cand) and not cand.startswith(a) for a in chosen):
            chosen.append(cand)
        if len(chosen) == k + 1:
            return chosen[1:]
    raise ValueError(f"not enough distinct distractors for {answer!r}")


# (question template, key -> answer) for the lookup kinds; the answer pool is the mapping's values
LOOKUPS = [("What is the capital of {}?", CAPITALS), ("What is the opposite of '{}'?", OPPOSITES),
           ("What is the plural of '{}'?", PLURALS), ("What colour is {}?", COLOURS),
           ("What does a {} do?", SOUNDS), ("How many {} are there?", UNITS)]


def _question(rng: random.Random) -> tuple[str, str, list[str]]:
    kind = rng.randrange(len(LOOKUPS) + 2)
    if kind == len(LOOKUPS):
        i = rng.randrange(7)
        return f"Which day comes after {DAYS[i]}?", DAYS[(i + 1) % 7], DAYS
    if kind == len(LOOKUPS) + 1:
        i = rng.randrange(12)
        return f"Which month comes before {MONTHS[i]}?", MONTHS[i - 1], MONTHS
    template, table = LOOKUPS[kind]
    key = rng.choice(list(table))
    return template.format(key), table[key], list(table.values())


PROMPT = "Question: {question}\nAnswer:"


def write_mc(folder: Path, n: int, *, seed: int = 1234, fewshot: int = 5) -> Path:
    """A multiple-choice user task (YAML + JSONL) of ``fewshot`` shots and ``n`` items; returns the YAML."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n + fewshot):
        q, answer, pool = _question(rng)
        choices = [answer] + _distinct(answer, [p for p in pool if p != answer], rng)
        rng.shuffle(choices)
        rows.append({"question": q, "choices": choices, "answer": choices.index(answer)})
    return _write(folder, "heldout_mc", rows, kind="multiple_choice", fewshot=fewshot,
                  extra={"choices": "choices", "gold": "answer"})


def write_gen(folder: Path, n: int, *, seed: int = 4321, fewshot: int = 5) -> Path:
    """A generation user task (YAML + JSONL) of the same held-out questions, answered freely."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n + fewshot):
        q, answer, _ = _question(rng)
        rows.append({"question": q, "answer": answer})
    return _write(folder, "heldout_gen", rows, kind="generate", fewshot=fewshot,
                  extra={"answer": "answer", "match": "exact", "stop": ["\n"], "max_new_tokens": 16})


def _write(folder: Path, name: str, rows: list[dict], *, kind: str, fewshot: int, extra: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": name, "kind": kind, "data": data.name, "prompt": PROMPT, "fewshot": fewshot, **extra}
    yaml_path = folder / f"{name}.yaml"
    yaml_path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items()))  # JSON values are YAML
    return yaml_path


def task_from(items: str | None, *, kind: str, n: int, prompt: str, fewshot: int, fields: dict):
    """The Task to benchmark: ``items`` (a user-task YAML, or a JSONL read with ``prompt``/``fields``),
    or freshly written held-out items when ``items`` is None."""
    from prunescope.tasks.user import load_user_task

    folder = Path(tempfile.mkdtemp(prefix="prunescope-bench-"))
    if items is None:
        return load_user_task((write_mc if kind == "multiple_choice" else write_gen)(folder, n))
    path = Path(items).resolve()
    if path.suffix in (".yaml", ".yml"):
        return load_user_task(path)
    spec = {"name": path.stem, "kind": kind, "data": str(path), "prompt": prompt, "fewshot": fewshot, **fields}
    yaml_path = folder / "task.yaml"
    yaml_path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items()))
    return load_user_task(yaml_path)
