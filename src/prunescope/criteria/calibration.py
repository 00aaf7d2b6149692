"""Calibration text: where it comes from and how it becomes token batches.

Like the references (SLEB ``utils/data_utils.py::get_wikitext2``, Shortened LLaMA ``src/dataset.py::
get_examples``), a corpus is tokenized once and ``samples`` windows of ``seq_len`` tokens are drawn at
seeded random offsets. The default is 64 windows of 512 tokens (32,768 tokens; SLEB used 128 x 2048
of wikitext-2, Shortened LLaMA 10 x 128 of BookCorpus) from the corpus shipped in the package: five
public-domain Shakespeare plays (``corpus/NOTICE.md``), so scoring works offline.

Sources (``calib``):
- None: the shipped corpus;
- ``wikitext-2``: wikitext-2-raw-v1's train split from the hub (SLEB's corpus);
- a hub dataset id ``name`` or ``name:config`` (first string column of the train split);
- a JSONL file with ``{"text": ...}`` per line (a corpus, like a hub dataset);
- a list of strings: used as given, one sequence per text (longer texts split into ``seq_len``
  windows), no sampling.
A corpus shorter than one window is used the same way as a list. What was used is recorded in
scores.json (``config.calib*``).
"""
from __future__ import annotations

import gzip
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from prunescope.errors import UsageError

CORPUS = Path(__file__).with_name("corpus") / "shakespeare.txt.gz"
DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 512
SEQ_LEN = 256  # task items and listed texts: longer ones are split into windows of this many tokens
BATCH_TOKENS = 2048  # padded tokens per batch: bounds activation memory, keeps CPU batches efficient
HUB_ALIASES = {"wikitext-2": "wikitext:wikitext-2-raw-v1", "wikitext2": "wikitext:wikitext-2-raw-v1"}
HUB_OVERSAMPLE = 16  # read this many times the tokens to be drawn, so windows come from a wide span


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
        return f"builtin:{CORPUS.name}"
    if isinstance(calib, (list, tuple)):
        return f"list of {len(calib)} texts"
    return HUB_ALIASES.get(str(calib), str(calib))


def _is_file_spec(spec: str) -> bool:
    path = Path(spec).expanduser()
    # A hub id is ``name`` or ``org/name``; anything that exists or looks like a path is read as a file.
    return path.exists() or path.suffix in (".jsonl", ".json", ".txt") or spec.startswith((".", "/", "~")) \
        or spec.count("/") > 1


def load_calibration_texts(calib=None, *, max_tokens: int | None = None) -> list[str]:
    """The calibration texts for ``calib`` (see the module docstring); ``max_tokens`` bounds how much
    of a hub dataset is read."""
    if calib is None:
        with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
            return [f.read()]
    if isinstance(calib, (list, tuple)):
        texts = [t for t in calib if isinstance(t, str) and t.strip()]
        if not texts:
            raise UsageError("calib: the list of calibration texts is empty")
        return texts
    spec = str(calib)
    if _is_file_spec(spec):
        return read_jsonl_texts(Path(spec).expanduser())
    return _hub_texts(HUB_ALIASES.get(spec, spec), max_tokens or DEFAULT_SAMPLES * DEFAULT_SEQ_LEN * HUB_OVERSAMPLE)


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
    hint = "pass a local file instead: --calib FILE.jsonl with one {\"text\": ...} per line, or omit --calib"
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


def context_limit(model, default: int = SEQ_LEN) -> int:
    """``default``, or less when the model's position table is shorter."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(default, int(limit)) if isinstance(limit, int) and limit > 1 else default


_TOKEN_CACHE: dict = {}


def _corpus_ids(tokenizer, texts: list[str], key) -> list[int]:
    """The corpus as one token sequence (texts joined by blank lines, no special tokens), cached per
    tokenizer and source so repeated scoring in one process tokenizes once."""
    cache_key = (id(tokenizer), getattr(tokenizer, "name_or_path", ""), key)
    if cache_key not in _TOKEN_CACHE:
        _TOKEN_CACHE.clear()  # one corpus at a time: they can be large
        _TOKEN_CACHE[cache_key] = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
    return _TOKEN_CACHE[cache_key]


def sample_windows(ids: list[int], *, samples: int, seq_len: int, seed: int,
                   max_tokens: int | None = None) -> list[list[int]]:
    """``samples`` windows of ``seq_len`` tokens at offsets drawn with ``random.Random(seed)`` as SLEB's
    ``get_wikitext2`` does (``randint(0, n - seq_len - 1)``); ``max_tokens`` truncates the set."""
    rng = random.Random(seed)
    out, total = [], 0
    for _ in range(samples):
        start = rng.randint(0, len(ids) - seq_len - 1)
        window = ids[start:start + seq_len]
        if max_tokens is not None and total + len(window) > max_tokens:
            window = window[:max_tokens - total]
            if len(window) >= 2:
                out.append(window)
            break
        out.append(window)
        total += len(window)
    return out


def tokenize_texts(tokenizer, texts: list[str], *, max_tokens: int | None = None, seq_len: int = SEQ_LEN):
    """Token id lists, one per text (long texts split into ``seq_len`` windows), stopping at ``max_tokens``."""
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


def calibration_batches(model, tokenizer, calib=None, *, samples: int | None = None, seq_len: int | None = None,
                        seed: int = 0, max_tokens: int | None = None, device="cpu") -> tuple[list[Batch], dict]:
    """The calibration set of ``calib`` as batches, and what to record about it in scores.json.

    A corpus gives ``samples`` (default 64) random windows of ``seq_len`` (default 512) tokens. When the
    model's context is shorter than ``seq_len``, windows shrink to it and their number grows so the
    token count stays. Every token but the first of each sequence is scored."""
    samples = DEFAULT_SAMPLES if samples is None else samples  # 0 is refused below, not read as "default"
    want_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    if samples < 1 or want_len < 2:
        raise UsageError(f"--calib-samples must be at least 1 and --calib-seq-len at least 2 "
                         f"(got {samples} and {want_len})")
    seq_len = context_limit(model, want_len)
    if seq_len < want_len:
        samples = math.ceil(samples * want_len / seq_len)
    texts = load_calibration_texts(calib, max_tokens=samples * seq_len * HUB_OVERSAMPLE)
    info = {"calib": describe_calibration(calib), "calib_seed": seed}
    ids = None
    if not isinstance(calib, (list, tuple)):
        ids = _corpus_ids(tokenizer, texts, describe_calibration(calib))
    if ids is not None and len(ids) > seq_len + 1:
        seqs = sample_windows(ids, samples=samples, seq_len=seq_len, seed=seed, max_tokens=max_tokens)
        info.update(calib_mode="random_windows", calib_samples=len(seqs), calib_seq_len=seq_len,
                    calib_corpus_tokens=len(ids))
    else:
        seqs = tokenize_texts(tokenizer, texts, max_tokens=max_tokens, seq_len=seq_len)
        info.update(calib_mode="texts", calib_texts=len(texts), calib_samples=len(seqs), calib_seq_len=seq_len)
    if not seqs:
        raise UsageError("the calibration set has no text with at least two tokens")
    batches = pack(tokenizer, [(s, [False] + [True] * (len(s) - 1), 0) for s in seqs], device=device)
    info["calib_tokens"] = int(sum(len(s) for s in seqs))
    return batches, info


def make_batches(tokenizer, texts: list[str], *, max_tokens: int | None = None, device="cpu",
                 seq_len: int = SEQ_LEN) -> list[Batch]:
    """Listed texts as batches where every real token but the first of each sequence is scored."""
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
