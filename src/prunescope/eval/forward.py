"""Low-level forward-pass helpers shared by the engine's plain and shared-prefix paths."""
from __future__ import annotations

from typing import Sequence

import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _cache_keyword() -> str:
    """Transformers 5.x calls the KV cache argument ``cache``; older versions ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast
    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


CACHE_KW = _cache_keyword()


def cache_of(out):
    """The KV cache a forward pass returned."""
    return getattr(out, CACHE_KW)


def forward(model, **kwargs):
    """``model(**kwargs)`` with the cache under this transformers version's keyword; models without
    ``logits_to_keep`` get full logits."""
    if "cache" in kwargs and CACHE_KW != "cache":
        kwargs[CACHE_KW] = kwargs.pop("cache")
    try:
        return model(**kwargs)
    except TypeError:  # models without logits_to_keep
        kwargs.pop("logits_to_keep", None)
        return model(**kwargs)


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
    return ids.to(device), mask.to(device)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every row right-aligned."""
    return _pad(rows, pad_id, device, left=True)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every row left-aligned; padding only after a row's last real token."""
    return _pad(rows, pad_id, device, left=False)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch (real tokens count from 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return t
    return 0
