"""User tasks: a YAML file that points at a local JSONL file or a hub dataset.

Multiple choice::

    name: capitals
    kind: multiple_choice
    data: capitals.jsonl          # relative to the YAML file; or  hub: {path: org/name, name: cfg, split: test}
    prompt: "Q: What is the capital of {country}?\\nA:"
    choices: options              # a row field holding the list of choices
    gold: answer                  # a row field: the index of the right choice, or its text
    fewshot: 3                    # optional: the first rows become shots (never evaluated)

Generate::

    name: spelling
    kind: generate
    data: spelling.jsonl
    prompt: "Spell {word} backwards:"
    answer: reversed              # a row field with the reference answer
    match: exact                  # exact | contains | number
    stop: ["\\n"]
    max_new_tokens: 16
    chat_template: false          # wrap the prompt in the model's chat template

Optional keys: ``description``, ``chance`` (a *declared* chance: prunescope always computes chance from
the items — the best of 1/k, the same position, the same answer — and ``prunescope tasks --check``
fails a task file whose declared chance is outside the computed one's 95% interval).
Each multiple-choice choice is scored as `` <choice>\n``: the shots show every answer followed by a
newline, and the terminator keeps one choice from being a prefix of another (``Paris`` vs ``Paris, TX``).
Check a task file with ``prunescope tasks --check my_task.yaml`` before trusting its numbers.
Rows are split by a hash of their prompt: one in four goes to the ``calib`` split, the rest to ``eval``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.io import read_yaml
from prunescope.tasks.data import load_hub, read_jsonl
from prunescope.tasks.sampling import partition_of
from prunescope.tasks.spec import Item, Task

_KEYS = {"name", "kind", "data", "hub", "prompt", "choices", "gold", "answer", "match", "stop", "max_new_tokens",
         "chat_template", "fewshot", "description", "chance"}


def _fmt(template: str, row: dict, where: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise UsageError(f"{where}: the template uses {{{e.args[0]}}} but the row has no such field "
                         f"(fields: {', '.join(row)})") from None


def _matcher(how: str):
    def number(text: str) -> str | None:
        found = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
        return found[0] if found else None

    if how == "exact":
        return lambda gold, out: " ".join(out.split()) == " ".join(str(gold).split())
    if how == "contains":
        return lambda gold, out: str(gold).strip() in out
    return lambda gold, out: number(out) is not None and number(out) == number(str(gold))


def load_user_task(path: str | Path) -> Task:
    """The Task described by the YAML file ``path`` (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--tasks {path}: task file not found")
    spec = read_yaml(path)
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: expected a mapping of task keys")
    unknown = set(spec) - _KEYS
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_KEYS))}")
    kind = spec.get("kind")
    if kind not in ("multiple_choice", "generate"):
        raise UsageError(f"{path}: 'kind' must be multiple_choice or generate, got {kind!r}")
    for key in ("name", "prompt") + (("choices", "gold") if kind == "multiple_choice" else ("answer",)):
        if key not in spec:
            raise UsageError(f"{path}: missing key {key!r}")
    if ("data" in spec) == ("hub" in spec):
        raise UsageError(f"{path}: give exactly one of 'data' (a JSONL file) or 'hub' ({{path, name, split}})")
    match = spec.get("match", "exact")
    if match not in ("exact", "contains", "number"):
        raise UsageError(f"{path}: 'match' must be exact, contains or number, got {match!r}")
    name = str(spec["name"])
    fewshot = int(spec.get("fewshot", 0))

    def rows() -> list[dict[str, Any]]:
        if "data" in spec:
            return read_jsonl(path.parent / spec["data"], flag=f"{path}: data")
        hub = spec["hub"]
        return load_hub(hub["path"], hub.get("name"), hub.get("split", "test"),
                        how_to_fix=f"point 'data:' in {path} at a local JSONL file")

    def make(n, seed, split):
        all_rows = rows()
        shots, pool = all_rows[:fewshot], all_rows[fewshot:]
        shot_text = ""
        for s in shots:
            if kind == "multiple_choice":
                ch, g = s[spec["choices"]], s[spec["gold"]]
                answer = ch[g] if isinstance(g, int) else g
            else:
                answer = s[spec["answer"]]
            shot_text += f"{_fmt(spec['prompt'], s, str(path))} {str(answer).strip()}\n\n"
        items = []
        for i, r in enumerate(pool):
            prompt = _fmt(spec["prompt"], r, f"{path} row {fewshot + i + 1}")
            if partition_of(f"user:{name}", prompt) != split:
                continue
            where = f"{path}: row {fewshot + i + 1}"
            if kind == "multiple_choice":
                choices = r.get(spec["choices"])
                if not isinstance(choices, list) or len(choices) < 2:
                    raise UsageError(f"{where}: field {spec['choices']!r} must be a list of at least 2 choices")
                g = r.get(spec["gold"])
                gold = g if isinstance(g, int) else (choices.index(g) if g in choices else None)
                if gold is None or not 0 <= gold < len(choices):
                    raise UsageError(f"{where}: gold {g!r} is neither an index into nor one of the choices")
                conts = [" " + str(c).strip() + "\n" for c in choices]
                items.append(Item(id=f"{name}-{i}", prompt=shot_text + prompt, gold=gold, target=conts[gold],
                                  choices=conts))
            else:
                gold = str(r.get(spec["answer"], ""))
                items.append(Item(id=f"{name}-{i}", prompt=shot_text + prompt, gold=gold, target=" " + gold))
            if n is not None and len(items) >= n:
                break
        return items

    matcher = _matcher(match)
    chance = spec.get("chance")
    if chance is not None and not isinstance(chance, (int, float)):
        raise UsageError(f"{path}: 'chance' must be a number, got {chance!r}")
    make(1, 0, "eval")  # fail at load, not mid-run, on a template or row the file cannot satisfy
    return Task(name=name, kind=kind, description=spec.get("description", f"user task from {path.name}"),
                chance=None if chance is None else float(chance), make_items=make, use_chat_template=bool(spec.get("chat_template", False)),
                stop=list(spec.get("stop", ["\n"])), max_new_tokens=int(spec.get("max_new_tokens", 32)),
                check=lambda item, out: matcher(item.gold, out), family=f"user:{name}")
