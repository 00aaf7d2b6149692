"""Calibration text: where it comes from and how it becomes token batches.

Sources: the built-in set (``calibration.jsonl`` beside this module: short English, maths and code
passages), a JSONL file with ``{"text": ...}`` per line, a list of strings, or a hub dataset id
(``name`` or ``name:config``, via the ``datasets`` library).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prunescope.errors import UsageError

BUILTIN = Path(__file__).with_name("calibration.jsonl")
SEQ_LEN = 256  # longer texts are split into windows of this many tokens
BATCH_TOKENS = 2048  # padded tokens per batch: bounds activation memory, keeps CPU batches efficient
HUB_DEFAULT_TOKENS = 32768  # how much of a hub dataset to read when no --max-calib-tokens is given


@dataclass
class Batch:
    """Right-padded token sequences. ``loss_mask[b, t]`` marks tokens that are predicted and counted
    (all real tokens but the first for text; only the answer tokens for task items); ``groups[b]``
    says which task a sequence belongs to (0 for plain text)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    groups: torch.Tensor


def describe_calibration(calib) -> str:
    if calib is None:
        return "builtin"
    if isinstance(calib, (list, tuple)):
        return f"list of {len(calib)} texts"
    return str(calib)


def load_calibration_texts(calib=None, *, max_tokens: int | None = None) -> list[str]:
    """The calibration texts for ``calib`` (see the module docstring)."""
    if calib is None:
        return read_jsonl_texts(BUILTIN)
    if isinstance(calib, (list, tuple)):
        texts = [t for t in calib if isinstance(t, str) and t.strip()]
        if not texts:
            raise UsageError("calib: the list of calibration texts is empty")
        return texts
    spec = str(calib)
    path = Path(spec).expanduser()
    # A hub id is ``name`` or ``org/name``; anything that exists or looks like a path is read as a file.
    if path.exists() or path.suffix in (".jsonl", ".json", ".txt") or spec.startswith((".", "/", "~")) \
            or spec.count("/") > 1:
        return read_jsonl_texts(path)
    return _hub_texts(spec, max_tokens or HUB_DEFAULT_TOKENS)


def read_jsonl_texts(path: Path) -> list[str]:
    """Texts of a JSONL file with ``{"text": ...}`` per line; a bad line is a UsageError naming it."""
    from prunescope.tasks.data import read_jsonl

    rows = read_jsonl(path, required=("text",), flag="--calib")
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row["text"], str):
            raise UsageError(f"--calib {path} row {lineno}: \"text\" must be a string")
    texts = [row["text"] for row in rows if row["text"].strip()]
    if not texts:
        raise UsageError(f"--calib {path} has no texts; each line must be {{\"text\": \"...\"}}")
    return texts


def _hub_texts(spec: str, max_tokens: int) -> list[str]:
    """Texts from a hub dataset (first string column of the train split), about ``max_tokens`` worth."""
    hint = "pass a local file instead: --calib FILE.jsonl with one {\"text\": ...} per line"
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--calib {spec}: reading hub datasets needs `pip install datasets`; or {hint}") from None
    from prunescope.hub import hub_access, hub_failure_reason

    name, _, config = spec.partition(":")
    access = None
    try:
        with hub_access() as access:
            ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
            texts, chars = [], 0
            for row in ds:
                text = next((v for v in row.values() if isinstance(v, str)), None)
                if text and text.strip():
                    texts.append(text)
                    chars += len(text)
                if chars >= max_tokens * 4:  # ~4 characters per token; exact counting happens when batching
                    break
    except Exception as e:  # offline, unknown id, gated: datasets raises many types
        raise UsageError(f"--calib {spec}: cannot read this hub dataset ({hub_failure_reason(e, access)}); "
                         f"{hint}") from None
    if not texts:
        raise UsageError(f"--calib {spec}: no text rows found; {hint}")
    return texts


def tokenize_texts(tokenizer, texts: list[str], *, max_tokens: int | None = None, seq_len: int = SEQ_LEN):
    """Token id lists, long texts split into ``seq_len`` windows, stopping at ``max_tokens`` in total."""
    seqs, total = [], 0
    for text in texts:
        ids = tokenizer(text).input_ids
        for start in range(0, len(ids), seq_len):
            window = ids[start:start + seq_len]
            if len(window) < 2:
                continue
            if max_tokens is not None and total + len(window) > max_tokens:
                window = window[:max_tokens - total]
                if len(window) >= 2:
                    seqs.append(window)
                return seqs
            seqs.append(window)
            total += len(window)
    return seqs


def context_limit(model, default: int = SEQ_LEN) -> int:
    """``default``, or less when the model's position table is shorter."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(default, int(limit)) if isinstance(limit, int) and limit > 1 else default


def make_batches(tokenizer, texts: list[str], *, max_tokens: int | None = None, device="cpu",
                 seq_len: int = SEQ_LEN) -> list[Batch]:
    """Calibration texts as batches where every real token but the first of each sequence is scored."""
    seqs = tokenize_texts(tokenizer, texts, max_tokens=max_tokens, seq_len=seq_len)
    if not seqs:
        raise UsageError("the calibration set has no text with at least two tokens")
    return pack(tokenizer, [(s, [False] + [True] * (len(s) - 1), 0) for s in seqs], device=device)


def pack(tokenizer, rows: list[tuple[list[int], list[bool], int]], *, device="cpu",
         batch_tokens: int = BATCH_TOKENS) -> list[Batch]:
    """Group ``(ids, scored, group)`` rows into right-padded batches of similar length (deterministic)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = sorted(rows, key=lambda r: -len(r[0]))
    batches, current = [], []
    for row in rows:
        width = len(current[0][0]) if current else len(row[0])
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(_to_batch(current, pad, device))
            current = []
        current.append(row)
    if current:
        batches.append(_to_batch(current, pad, device))
    return batches


def _to_batch(rows, pad: int, device) -> Batch:
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (seq, mask, _) in enumerate(rows):
        ids[b, :len(seq)] = torch.tensor(seq)
        attn[b, :len(seq)] = 1
        scored[b, :len(seq)] = torch.tensor(mask)
    groups = torch.tensor([g for _, _, g in rows], dtype=torch.long)
    return Batch(ids.to(device), attn.to(device), scored.to(device), groups)
