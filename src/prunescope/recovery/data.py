"""Where recovery's training examples come from.

A prompt source is GSM8K or any built-in task (its ``calib`` split, so training never sees evaluation
items), a JSONL file, or a hub dataset. With ``--data self`` the unpruned teacher answers every prompt
greedily (the paper's self-generated responses); answers the task's checker rejects can be dropped.
Responses are cached in ``self_generated.jsonl`` under a key made of the teacher, the prompt set and
the generation settings, and reused by any later run with the same key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.io import write_jsonl

log = logging.getLogger(__name__)

CACHE_FILE = "self_generated.jsonl"


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

    def completion(self, response: str, tokenizer) -> str:
        """The trained text after the context: the assistant turn as the chat template writes it, or the
        task response followed by its stop string so the model learns where to end."""
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


def load_prompts(spec: str, *, num: int = 0, seed: int = 0, task_data: str | None = None) -> list[Prompt]:
    """Prompts from ``spec``: a JSONL path, a task name (calib split), or a hub dataset id.
    ``num`` > 0 keeps that many (the first ones of a file, a seeded sample of a task); ``task_data`` is
    the dataset file or folder for tasks that read one (GSM8K)."""
    from prunescope.tasks import get_task, task_names

    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        prompts = read_prompt_file(path)
        return prompts[:num] if num else prompts
    if path.suffix in (".jsonl", ".json") or spec.startswith((".", "/", "~")):
        raise UsageError(f"--prompts {spec}: no such file")
    if spec in task_names():
        task = get_task(spec, data=task_data)
        items = task.items(num or None, seed=seed, split="calib")
        return [Prompt(id=f"{spec}/{item.id}", task=task, item=item, response=item.target) for item in items]
    if "/" in spec:
        return _hub_prompts(spec, num=num, seed=seed)
    raise UsageError(f"--prompts {spec!r} is not a file, a task or a hub dataset id; tasks: {', '.join(task_names())}")


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


# ----------------------------------------------------------------------------------------------- generation

def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str], batch_size: int) -> list[str]:
    """Greedy continuations through the evaluation engine, so training data is decoded the way
    evaluation decodes."""
    from prunescope.eval.engine import generate as engine_generate
    return engine_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size)


def cache_key(*, teacher: str, prompts: str, num_prompts: int, seed: int, max_new_tokens: int,
              task_data: str | None = None) -> str:
    """Identifies a set of self-generated responses: same key, same responses."""
    blob = json.dumps({"teacher": str(teacher), "prompts": str(prompts), "num_prompts": num_prompts, "seed": seed,
                       "max_new_tokens": max_new_tokens, "task_data": task_data, "decoding": "greedy"},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_cache(path: Path, key: str) -> dict[str, dict]:
    """Rows of a cache (or its unfinished ``.partial`` file) made under ``key``, by prompt id.
    A torn last line from an interrupted run is ignored."""
    rows: dict[str, dict] = {}
    for candidate in (path, path.with_name(path.name + ".partial")):
        if not candidate.is_file():
            continue
        for line in candidate.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("cache_key") == key and "id" in row:
                rows[str(row["id"])] = row
    return rows


def self_generate(prompts: list[Prompt], teacher, teacher_tokenizer, *, cache_path: Path, key: str,
                  teacher_name: str, max_new_tokens: int, batch_size: int) -> list[dict]:
    """The teacher's greedy response to every prompt (cached), each row with ``correct`` (None when
    unchecked). ``teacher`` may be a zero-argument callable that loads it, so a full cache never loads it."""
    from tqdm.auto import tqdm

    cache_path = Path(cache_path)
    cached = read_cache(cache_path, key)
    todo = [p for p in prompts if p.id not in cached]
    if todo:
        if callable(teacher) and not hasattr(teacher, "generate"):
            teacher, teacher_tokenizer = teacher()
        partial = cache_path.with_name(cache_path.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc="teacher responses", unit="prompt", dynamic_ncols=True)
        # Prompts with the same decoding settings go together; rows are appended chunk by chunk so an
        # interruption loses at most one chunk, and the finished cache replaces the file atomically.
        groups: dict[tuple, list[Prompt]] = {}
        for p in todo:
            groups.setdefault((p.max_new_tokens(max_new_tokens), tuple(p.stop)), []).append(p)
        with open(partial, "a", encoding="utf-8") as fh:
            for (limit, stop), group in groups.items():
                for i in range(0, len(group), batch_size * 4):
                    chunk = group[i:i + batch_size * 4]
                    texts = [p.render(teacher_tokenizer) for p in chunk]
                    outs = generate(teacher, teacher_tokenizer, texts, max_new_tokens=limit, stop=list(stop),
                                    batch_size=batch_size)
                    for p, text, out in zip(chunk, texts, outs):
                        row = {"id": p.id, "prompt": text, "response": out, "correct": p.check(out),
                               "teacher": teacher_name, "cache_key": key}
                        cached[p.id] = row
                        fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    bar.update(len(chunk))
        bar.close()
    rows = [cached[p.id] for p in prompts]
    write_jsonl(cache_path, rows)
    cache_path.with_name(cache_path.name + ".partial").unlink(missing_ok=True)
    return rows


def tokenize_example(prompt: Prompt, response: str, tokenizer, max_seq_len: int) -> dict | None:
    """``input_ids`` and ``labels`` (-100 on the context, so the loss covers the response only).
    None when the cut at ``max_seq_len`` leaves no response token."""
    from prunescope.eval.engine import encode  # the context is tokenized exactly as evaluation tokenizes it

    context = prompt.render(tokenizer)
    completion = prompt.completion(response, tokenizer)
    ctx_ids = encode(tokenizer, context)
    comp_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = (ctx_ids + comp_ids)[:max_seq_len]
    labels = ([-100] * len(ctx_ids) + comp_ids)[:max_seq_len]
    if all(t == -100 for t in labels):
        return None
    return {"input_ids": ids, "labels": labels}
