"""Where recovery's training examples come from.

A prompt source is one of:

* ``self-instruct`` (the default): 427 general instructions shipped in ``recovery/prompts/`` (175
  seed tasks and 252 user-oriented instructions of Self-Instruct, Wang et al. 2023, Apache-2.0; see
  ``prompts/NOTICE.txt``). General prompts, as the paper's recovery used (it took Dolci's).
* a hub chat dataset (Dolci, Alpaca, ShareGPT-style ``conversations``), or a JSONL file of prompts;
* a task name: *task-specific recovery* on the task's ``calib`` split, minus every prompt whose
  question has the canonical form of an evaluation item (``3 + 4`` and ``4 + 3`` are one question).

With ``--data self`` the unpruned teacher answers every prompt (``generation.py``).
"""
from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.recovery.generation import CACHE_FILE, cache_key, read_cache, self_generate  # noqa: F401

log = logging.getLogger(__name__)

PACKAGED_PROMPTS = {"self-instruct": Path(__file__).parent / "prompts" / "self_instruct.jsonl"}


@dataclass
class Prompt:
    """One training prompt: chat ``messages`` (rendered through the chat template) or a task ``item``
    (rendered exactly as evaluation renders it), with the response the source supplies, if any."""
    id: str
    messages: list[dict] | None = None
    task: Any = None
    item: Any = None
    response: str | None = None
    meta: dict = field(default_factory=dict)

    def render(self, tokenizer) -> str:
        """The context text the model sees before its response."""
        if self.task is not None:
            return self.task.render(self.item, tokenizer)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['content']}\n" for m in self.messages)

    @property
    def chat(self) -> bool:
        return self.task is None

    @property
    def stop(self) -> list[str]:
        return list(self.task.stop) if self.task is not None else []

    def max_new_tokens(self, default: int) -> int:
        return int(self.task.max_new_tokens) if self.task is not None else default

    def completion(self, response: str, tokenizer, *, end: bool = True) -> str:
        """The trained text after the context: the assistant turn as the chat template writes it, or the
        task response followed by its stop string so the model learns where to end. ``end=False`` (a
        response cut by the length limit) gives the response alone, with no stop or end-of-turn token."""
        if not end:
            return response
        if self.task is not None:
            end = self.stop[0] if self.stop else (tokenizer.eos_token or "")
            return response + end
        if getattr(tokenizer, "chat_template", None):
            prefix = self.render(tokenizer)
            full = tokenizer.apply_chat_template(self.messages + [{"role": "assistant", "content": response}],
                                                 tokenize=False)
            if full.startswith(prefix):
                return full[len(prefix):]
        return response + (tokenizer.eos_token or "")

    def check(self, response: str) -> bool | None:
        """Whether ``response`` is correct; None when the source has no checker."""
        if self.task is None:
            return None
        if self.task.check is not None:
            return bool(self.task.check(self.item, response))
        if getattr(self.task, "check_all", None) is not None:
            result = self.task.check_all([self.item], [response])[0]
            return bool(result.get("correct") if isinstance(result, dict) else result)
        return response.strip() == str(self.item.target).strip()


def prompt_source_kind(spec: str) -> str:
    """``"task-specific"`` when ``spec`` names a task (its prompts are the evaluated skill), else ``"general"``."""
    from prunescope.tasks import task_names
    spec = str(spec)
    return "task-specific" if spec not in PACKAGED_PROMPTS and not Path(spec).expanduser().is_file() and \
        spec in task_names() else "general"


def load_prompts(spec: str, *, num: int = 0, seed: int = 0, task_data: str | None = None,
                 disjoint_from: list[str] | None = None, stats: dict | None = None) -> list[Prompt]:
    """Prompts from ``spec``: ``self-instruct`` (shipped), a JSONL path, a task name (calib split, minus
    questions equal in canonical form to an evaluation item of the task or of ``disjoint_from``), or a
    hub dataset id. ``num`` > 0 keeps that many (the first ones of a file, a seeded sample otherwise);
    ``task_data`` is the dataset file or folder for tasks that read one (GSM8K). ``stats``, when given,
    receives what was left out."""
    from prunescope.tasks import get_task, task_names

    spec = str(spec)
    if spec in PACKAGED_PROMPTS:
        prompts = read_prompt_file(PACKAGED_PROMPTS[spec])
        if num and num < len(prompts):
            import random
            prompts = random.Random(seed).sample(prompts, num)
        return prompts
    path = Path(spec).expanduser()
    if path.is_file():
        prompts = read_prompt_file(path)
        return prompts[:num] if num else prompts
    if path.suffix in (".jsonl", ".json") or spec.startswith((".", "/", "~")):
        raise UsageError(f"--prompts {spec}: no such file")
    if spec in task_names():
        task = get_task(spec, data=task_data)
        items = task.items(num or None, seed=seed, split="calib")
        evaluated = set()
        for name in dict.fromkeys([spec, *(disjoint_from or [])]):
            other = task if name == spec else get_task(name, data=task_data)
            evaluated |= {canonical_question(question_text(it)) for it in other.items(None, seed=seed, split="eval")}
        kept = [it for it in items if canonical_question(question_text(it)) not in evaluated]
        if stats is not None:
            stats.update(overlap_with_eval=len(items) - len(kept), disjoint_from=list(dict.fromkeys([spec, *(disjoint_from or [])])))
        if not kept:
            raise UsageError(f"--prompts {spec}: every calibration question also appears (in canonical form) among "
                             f"the evaluation items; use general prompts (--prompts self-instruct) instead")
        return [Prompt(id=f"{spec}/{item.id}", task=task, item=item, response=item.target) for item in kept]
    if "/" in spec:
        return _hub_prompts(spec, num=num, seed=seed)
    raise UsageError(f"--prompts {spec!r} is not a file, a task or a hub dataset id; tasks: {', '.join(task_names())}")


def question_text(item) -> str:
    """The bare question of a task item: its sampling key (shots excluded) when it has one, else the
    question field, else the whole prompt."""
    meta = getattr(item, "meta", None) or {}
    for name in ("key", "question", "expression"):
        if isinstance(meta.get(name), str):
            return meta[name]
    return item.prompt


_COMMUTATIVE = (ast.Add, ast.Mult)


def _canonical_expr(node) -> str:
    """An arithmetic expression with the operands of + and * chains sorted: a+b and b+a agree."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _COMMUTATIVE):
        op = type(node.op)
        terms, stack = [], [node]
        while stack:  # flatten a + (b + c) into one sorted chain
            n = stack.pop()
            if isinstance(n, ast.BinOp) and isinstance(n.op, op):
                stack += [n.left, n.right]
            else:
                terms.append(_canonical_expr(n))
        return "(" + ("+" if op is ast.Add else "*").join(sorted(terms)) + ")"
    if isinstance(node, ast.BinOp):
        sym = {ast.Sub: "-", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}.get(type(node.op), "?")
        return f"({_canonical_expr(node.left)}{sym}{_canonical_expr(node.right)})"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return f"(-{_canonical_expr(node.operand)})"
    if isinstance(node, ast.Constant):
        return repr(node.value)
    raise ValueError("not arithmetic")


def canonical_question(text: str) -> str:
    """A form under which two questions that ask the same thing compare equal: case, whitespace and a
    trailing ``=``/``?`` are ignored; an arithmetic expression is parsed and the operands of + and *
    are put in order, so ``3 + 4`` equals ``4+3`` and ``(2 * 3) + 1`` equals ``1 + 3*2``."""
    flat = re.sub(r"\s+", "", str(text).lower()).rstrip("=?")
    expr = flat.replace("×", "*").replace("x", "*") if re.fullmatch(r"[\d+\-*x×/().]+", flat) else flat
    try:
        return "expr:" + _canonical_expr(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return flat


def _messages_from_row(row: Any, where: str) -> tuple[list[dict], str | None]:
    """(context messages, response or None) from one JSONL/dataset row."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object with 'prompt' or 'messages', got {type(row).__name__}")
    response = row.get("response", row.get("completion"))
    if response is not None and not isinstance(response, str):
        raise UsageError(f"{where}: 'response' must be a string")
    if "messages" in row:
        messages = row["messages"]
        if (not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise UsageError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
        if messages[-1]["role"] == "assistant":
            response, messages = messages[-1]["content"], messages[:-1]
        if not messages:
            raise UsageError(f"{where}: 'messages' has no turn before the assistant's")
        return [dict(role=m["role"], content=m["content"]) for m in messages], response
    prompt = row.get("prompt", row.get("question", row.get("instruction")))
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{where}: needs a non-empty string 'prompt' (or 'messages'); keys found: "
                         f"{', '.join(row) or 'none'}")
    if response is None and isinstance(row.get("answer"), str):
        response = row["answer"]
    return [{"role": "user", "content": prompt}], response


def read_prompt_file(path: Path) -> list[Prompt]:
    """Parse a JSONL prompt file; malformed lines are UsageErrors naming the file and line."""
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            messages, response = _messages_from_row(row, where)
            prompts.append(Prompt(id=str(row.get("id", lineno)), messages=messages, response=response))
    if not prompts:
        raise UsageError(f"--prompts {path} is empty; it needs one JSON object per line with 'prompt' or 'messages'")
    return prompts


def _hub_prompts(name: str, *, num: int, seed: int) -> list[Prompt]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--prompts {name}: loading hub datasets needs the datasets package: pip install datasets") from None
    from prunescope.hub import hub_access, hub_failure_reason

    access = None
    try:
        with hub_access() as access:
            ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        raise UsageError(f"--prompts {name}: cannot load this hub dataset ({hub_failure_reason(e, access)}); "
                         "pass a local JSONL of prompts instead") from None
    if num and num < len(ds):
        ds = ds.shuffle(seed=seed).select(range(num))
    prompts = []
    for i, row in enumerate(ds):
        if "conversations" in row and "messages" not in row:
            row = {**row, "messages": [{"role": {"human": "user", "gpt": "assistant"}.get(m.get("from"), m.get("from")),
                                        "content": m.get("value")} for m in row["conversations"]]}
        messages, response = _messages_from_row(row, f"{name} row {i}")
        prompts.append(Prompt(id=str(i), messages=messages, response=response))
    return prompts


def tokenize_example(prompt: Prompt, response: str, tokenizer, max_seq_len: int, *, end: bool = True) -> dict | None:
    """``input_ids`` and ``labels`` (-100 on the context, so the loss covers the response only).
    ``end=False`` leaves out the stop / end-of-turn token (a response cut by the length limit).
    None when the cut at ``max_seq_len`` leaves no response token."""
    from prunescope.eval.engine import encode  # the context is tokenized exactly as evaluation tokenizes it

    context = prompt.render(tokenizer)
    completion = prompt.completion(response, tokenizer, end=end)
    ctx_ids = encode(tokenizer, context)
    comp_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = (ctx_ids + comp_ids)[:max_seq_len]
    labels = ([-100] * len(ctx_ids) + comp_ids)[:max_seq_len]
    if all(t == -100 for t in labels):
        return None
    # context_len and stop let on-policy distillation sample its own response to the same context
    return {"input_ids": ids, "labels": labels, "context_len": len(ctx_ids), "stop": prompt.stop}


def prompt_example(prompt: Prompt, tokenizer, max_seq_len: int) -> dict | None:
    """A context without a response, for fully on-policy distillation (the student writes the response);
    None when the context leaves no room for one within ``max_seq_len``."""
    from prunescope.eval.engine import encode

    ctx_ids = encode(tokenizer, prompt.render(tokenizer))
    if len(ctx_ids) >= max_seq_len:
        return None
    return {"input_ids": ctx_ids, "labels": [-100] * len(ctx_ids), "context_len": len(ctx_ids), "stop": prompt.stop}
