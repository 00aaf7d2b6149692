"""The teacher's responses ("self-generated" data): sampled or greedy, cached, sharded across processes.

Follows the paper's ``self_generate/`` step (Shrestha et al. 2026): the unpruned model answers every
prompt once, sampling at temperature 0.9 and top-p 0.95, and nothing is filtered for correctness.
Each row records whether the response ended (end-of-sequence or a stop string) or was cut by the
length limit, so training can keep a cut response without a stop token or leave it out.

Responses are cached in ``self_generated.jsonl`` under a key made of the teacher, the prompt set and
the decoding settings, and reused by any later run with the same key. Under ``accelerate launch``
every process answers its own share of the prompts into its own ``.partial.<rank>`` file; the
processes meet once, when all have finished, so no process waits in a collective while another
generates.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from prunescope.io import write_jsonl

CACHE_FILE = "self_generated.jsonl"
CACHE_FORMAT = 2  # rows carry "truncated"; caches from before are regenerated


def cache_key(*, teacher: str, prompts: str, num_prompts: int, seed: int, max_new_tokens: int,
              task_data: str | None = None, decoding: str = "greedy", temperature: float = 1.0,
              top_p: float = 1.0) -> str:
    """Identifies a set of self-generated responses: same key, same responses."""
    sampling = {"temperature": temperature, "top_p": top_p} if decoding == "sample" else {}
    blob = json.dumps({"teacher": str(teacher), "prompts": str(prompts), "num_prompts": num_prompts, "seed": seed,
                       "max_new_tokens": max_new_tokens, "task_data": task_data, "decoding": decoding, **sampling,
                       "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _partials(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".partial*")) if path.parent.is_dir() else []


def read_cache(path: Path, key: str) -> dict[str, dict]:
    """Rows of a cache (and of its unfinished ``.partial*`` files) made under ``key``, by prompt id.
    A torn last line from an interrupted run is ignored."""
    path = Path(path)
    rows: dict[str, dict] = {}
    for candidate in [path, *_partials(path)]:
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


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for e in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return ids


@torch.inference_mode()
def generate_responses(model, tokenizer, texts: list[str], *, max_new_tokens: int, stop: list[str],
                       batch_size: int, decoding: str, temperature: float = 0.9, top_p: float = 0.95,
                       seed: int = 0) -> list[tuple[str, bool]]:
    """(response, truncated) for every context in ``texts``, through transformers' ``generate``
    (left-padded batches, KV cache). ``truncated`` is true when neither end-of-sequence nor a stop
    string came within ``max_new_tokens``. Sampling is seeded per batch from ``seed``."""
    from prunescope.eval.engine import encode, truncate_at_stop

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos = _eos_ids(model, tokenizer)
    encoded = [encode(tokenizer, t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    results: list[tuple[str, bool]] = [("", False)] * len(texts)
    sample = decoding == "sample"
    settings = dict(do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
                    top_k=0 if sample else None, max_new_tokens=max_new_tokens, pad_token_id=pad,
                    eos_token_id=sorted(eos) or None)
    for b, start in enumerate(range(0, len(order), batch_size)):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk], device=device)
        torch.manual_seed(seed * 1_000_003 + b)
        out = model.generate(input_ids=ids, attention_mask=mask, **settings)
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            ended = next((j for j, t in enumerate(new) if t in eos), None)
            text = tokenizer.decode(new[:ended] if ended is not None else new, skip_special_tokens=True)
            text, stopped = truncate_at_stop(text, stop)
            results[i] = (text, ended is None and not stopped)
    return results


def self_generate(prompts: list, teacher, teacher_tokenizer, *, cache_path: Path, key: str, teacher_name: str,
                  max_new_tokens: int, batch_size: int, decoding: str = "greedy", temperature: float = 0.9,
                  top_p: float = 0.95, seed: int = 0, rank: int = 0, world: int = 1, barrier=None) -> list[dict]:
    """The teacher's response to every prompt (cached), each row with ``truncated`` and ``correct``
    (None when the source has no checker). ``teacher`` may be a zero-argument callable that loads it, so
    a full cache never loads it. With ``world`` > 1 this process answers prompts ``rank::world`` of those
    not cached, then calls ``barrier`` once; every process returns all rows."""
    from tqdm.auto import tqdm

    from prunescope.progress import bars_on

    cache_path = Path(cache_path)
    cached = read_cache(cache_path, key)
    todo = [p for p in prompts if p.id not in cached][rank::world]
    if todo:
        if callable(teacher) and not hasattr(teacher, "generate"):
            teacher, teacher_tokenizer = teacher()
        partial = cache_path.with_name(cache_path.name + (".partial" if world == 1 else f".partial.{rank}"))
        partial.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc="teacher responses", unit="prompt", dynamic_ncols=True,
                   disable=rank != 0 or not bars_on())
        # Prompts with the same limits go together; rows are appended chunk by chunk so an interruption
        # loses at most one chunk, and the finished cache replaces the file atomically.
        groups: dict[tuple, list] = {}
        for p in todo:
            groups.setdefault((p.max_new_tokens(max_new_tokens), tuple(p.stop)), []).append(p)
        with open(partial, "a", encoding="utf-8") as fh:
            for g, ((limit, stop), group) in enumerate(groups.items()):
                for i in range(0, len(group), batch_size * 4):
                    chunk = group[i:i + batch_size * 4]
                    texts = [p.render(teacher_tokenizer) for p in chunk]
                    outs = generate_responses(teacher, teacher_tokenizer, texts, max_new_tokens=limit, stop=list(stop),
                                              batch_size=batch_size, decoding=decoding, temperature=temperature,
                                              top_p=top_p, seed=seed * 7919 + rank * 104_729 + g * 1_009 + i)
                    for p, text, (out, cut) in zip(chunk, texts, outs):
                        row = {"id": p.id, "prompt": text, "response": out, "truncated": cut, "correct": p.check(out),
                               "teacher": teacher_name, "cache_key": key}
                        cached[p.id] = row
                        fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    bar.update(len(chunk))
        bar.close()
    del teacher  # this function's reference; a teacher it loaded is freed here
    if barrier is not None:
        barrier()
        cached = read_cache(cache_path, key)
    rows = [cached[p.id] for p in prompts]
    if rank == 0:
        write_jsonl(cache_path, rows)
        for partial in _partials(cache_path):
            partial.unlink(missing_ok=True)
    if barrier is not None:
        barrier()
    return rows
