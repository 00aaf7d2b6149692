"""The shared fast path: capture block inputs once, then evaluate "skip block c" from block c's input.

Skipping block ``c`` leaves every block before it unchanged, so its input is the same as in the
full model. One forward pass with forward pre-hooks records the input of every block; then each
candidate cut runs only the blocks after ``c``: the blocks before ``c`` are virtually removed
(``skip_layers``) and block ``c`` itself is replaced by a stand-in that returns the recorded input.
The rest of the forward (masks, rotary embeddings, per-layer attention types, final norm, logit
soft-capping, the head) is the model's own code, so the result equals the naive "skip c and run
the whole model" path while doing about half the block work.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunescope.criteria.calibration import Batch
from prunescope.models.architectures import get_architecture, get_submodule
from prunescope.pruning import skip_layers


def model_logits(model, batch: Batch) -> torch.Tensor:
    """Logits of ``model`` on ``batch`` (no KV cache)."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def sequence_stats(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per sequence: (sum of log-probabilities of the scored tokens, number of scored tokens), shape (B, 2).

    Token ``t`` is predicted from position ``t - 1``; padding and unscored tokens count nothing.
    ``logits`` are the model's (B, T, vocab) logits, or the (scored tokens, vocab) rows that a forward
    inside ``scored_head`` returns."""
    mask = batch.loss_mask[:, 1:].to(logits.device)
    if logits.dim() == 2:
        targets = batch.input_ids[:, 1:].to(logits.device)[mask]
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        rows = torch.arange(mask.shape[0], device=logits.device).unsqueeze(1).expand_as(mask)[mask]
        logprob = torch.zeros(mask.shape[0], dtype=nll.dtype, device=nll.device).index_add_(0, rows, -nll)
        return torch.stack([logprob, mask.sum(dim=1).to(logprob.dtype)], dim=1).cpu()
    targets = batch.input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten().to(logits.device),
                          reduction="none").view_as(targets)
    logprob = -(nll * mask).sum(dim=1)
    return torch.stack([logprob, mask.sum(dim=1).to(logprob.dtype)], dim=1).cpu()


@contextlib.contextmanager
def scored_head(model, batch: Batch, enabled: bool = True) -> Iterator[None]:
    """Inside, the output head sees only the positions that predict a scored token (no padding, no
    last position, no unscored context), so a forward returns (scored tokens, vocab) logits in batch
    order. The head module itself runs and what the model does to its output (soft-capping, scaling)
    is elementwise, so each row equals the full logits' row. The head is a large share of a small
    model's work (SmolLM2-135M: a fifth of the linear layers' FLOPs), and task items score only their
    answer. A model whose head is not its output-embedding module gets full logits, which
    ``sequence_stats`` also takes."""
    head = model.get_output_embeddings() if enabled else None
    if head is None:
        yield
        return
    mask = batch.loss_mask[:, 1:]

    def hook(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != batch.input_ids.shape:
            return None  # not the whole sequence (a model slicing before its head): leave it alone
        return (hidden[:, :-1][mask.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def maybe_skip(model, layers: Iterable[int]) -> Iterator[nn.Module]:
    """``skip_layers`` that does nothing for an empty list."""
    layers = sorted(layers)
    if not layers:
        yield model
        return
    with skip_layers(model, layers=layers):
        yield model


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _StopForward(Exception):
    """Raised after the last block when the logits are not needed (saves the final norm and the head)."""


def capture(model, batch: Batch, *, removed: Iterable[int] = (), logits: bool = True, scored: bool = False):
    """One forward of ``model`` with blocks ``removed`` skipped, recording what enters each kept block.

    Returns (logits, inputs, tuple_output): ``inputs[p]`` is the input of the ``p``-th kept block and
    ``inputs[-1]`` the output of the last block (before the final norm); ``tuple_output`` says whether
    the blocks return tuples (older transformers) rather than tensors. With ``logits=False`` the
    forward stops after the last block and the returned logits are None; ``scored=True`` returns only
    the scored rows (see ``scored_head``)."""
    with maybe_skip(model, removed):
        blocks = get_submodule(model, get_architecture(model).layers)
        inputs: list[torch.Tensor | None] = [None] * (len(blocks) + 1)
        tuple_output = [False]

        def pre_hook(position):
            def hook(module, args, kwargs):
                inputs[position] = _hidden(args, kwargs).detach()
            return hook

        def last_hook(module, args, kwargs, output):
            tuple_output[0] = isinstance(output, tuple)
            inputs[-1] = (output[0] if isinstance(output, tuple) else output).detach()
            if not logits:
                raise _StopForward

        handles = [b.register_forward_pre_hook(pre_hook(p), with_kwargs=True) for p, b in enumerate(blocks)]
        handles.append(blocks[-1].register_forward_hook(last_hook, with_kwargs=True))
        out = None
        try:
            with scored_head(model, batch, enabled=scored and logits):
                out = model_logits(model, batch)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
    return out, inputs, tuple_output[0]


class _Replay(nn.Module):
    """Stands in for a skipped block: ignores its input and returns the recorded input of that block."""

    def __init__(self, hidden: torch.Tensor, tuple_output: bool, like: nn.Module):
        super().__init__()
        self.hidden = hidden
        self.tuple_output = tuple_output
        if hasattr(like, "attention_type"):  # some model loops read it from the block
            self.attention_type = like.attention_type

    def forward(self, *args, **kwargs):
        return (self.hidden,) if self.tuple_output else self.hidden


def logits_skipping(model, batch: Batch, *, removed: list[int], candidate: int, hidden: torch.Tensor,
                    tuple_output: bool) -> torch.Tensor:
    """Logits with blocks ``removed + [candidate]`` skipped, given ``hidden`` = the input of ``candidate``
    in the model with ``removed`` skipped. Only the blocks after ``candidate`` run."""
    return run_from(model, batch, skipped=set(removed) | {candidate}, start=candidate + 1, hidden=hidden,
                    tuple_output=tuple_output, scored=True)[0]


def run_from(model, batch: Batch, *, skipped: Iterable[int], start: int, hidden: torch.Tensor, tuple_output: bool,
             record: int | None = None, scored: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the model with blocks ``skipped`` skipped, given ``hidden`` = the input of block ``start``
    (1 <= start <= number of blocks; the number of blocks means the last block's output) in that model.
    Only the blocks from ``start`` on that are not skipped run: block ``start - 1`` is replaced by a
    stand-in returning ``hidden`` and every other block before ``start`` is skipped. ``record``, a block
    that runs, has its input returned as well (else None). ``scored``: logits of the scored positions
    only (see ``scored_head``)."""
    slot = start - 1
    skip = (set(skipped) | set(range(start))) - {slot}
    got: list[torch.Tensor] = []
    handle = None
    if record is not None:
        def hook(module, args, kwargs):
            got.append(_hidden(args, kwargs).detach())
        handle = get_submodule(model, get_architecture(model).layers)[record].register_forward_pre_hook(
            hook, with_kwargs=True)
    try:
        with maybe_skip(model, skip):
            blocks = get_submodule(model, get_architecture(model).layers)
            original = blocks[0]
            blocks[0] = _Replay(hidden, tuple_output, original)
            try:
                with scored_head(model, batch, enabled=scored):
                    out = model_logits(model, batch)
            finally:
                blocks[0] = original
    finally:
        if handle is not None:
            handle.remove()
    return out, (got[0] if got else None)


def skip_scan(model, batches: list[Batch], *, removed: Iterable[int] = (), candidates: Iterable[int] | None = None,
              fast: bool = True, progress=None,
              base: bool = True) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
    """Per-sequence stats (see ``sequence_stats``) of the model with ``removed`` skipped, and of the same
    model with each candidate block additionally skipped. Indices are 0-based in the unpruned model.

    ``fast`` reuses the captured block inputs; ``fast=False`` runs the whole model per candidate.
    ``base=False`` skips the stats of the model itself (returned as None) when the caller needs none."""
    removed = sorted(removed)
    total = len(get_submodule(model, get_architecture(model).layers))
    kept = [i for i in range(total) if i not in set(removed)]
    candidates = kept if candidates is None else list(candidates)
    base_parts: list[torch.Tensor] = []
    parts: dict[int, list[torch.Tensor]] = {c: [] for c in candidates}
    with torch.inference_mode():
        for batch in batches:
            if fast:
                logits, inputs, tuple_output = capture(model, batch, removed=removed, logits=base, scored=True)
            elif base:
                with maybe_skip(model, removed):
                    logits = model_logits(model, batch)
            if base:
                base_parts.append(sequence_stats(logits, batch))
                del logits
            for c in candidates:
                if fast:
                    out = logits_skipping(model, batch, removed=removed, candidate=c,
                                          hidden=inputs[kept.index(c)], tuple_output=tuple_output)
                else:
                    with maybe_skip(model, set(removed) | {c}):
                        out = model_logits(model, batch)
                parts[c].append(sequence_stats(out, batch))
                if progress is not None:
                    progress.update(1)
    return (torch.cat(base_parts) if base else None), {c: torch.cat(p) for c, p in parts.items()}


def mean_loss(stats: torch.Tensor) -> float:
    """Mean negative log-likelihood per scored token."""
    return float(-stats[:, 0].sum() / stats[:, 1].sum().clamp(min=1))
