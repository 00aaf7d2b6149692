"""Cutting decoder blocks out of a model, for real or virtually.

Both paths share one mechanism: the block list is replaced by the kept blocks (no weight is
copied), the config's per-layer fields are sliced by the removed indices, and each kept block's
layer index is renumbered so the KV cache addresses the right slot.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from prunescope.errors import UsageError
from prunescope.models.architectures import Architecture, get_architecture, get_submodule, set_submodule


def validate_layers(layers: Iterable[int], total: int, *, flag: str = "--layers") -> list[int]:
    """Check 0-based block indices: integers in range, no duplicates, at least one block kept."""
    layers = list(layers)
    for i in layers:
        if not isinstance(i, int) or isinstance(i, bool):
            raise UsageError(f"{flag}: {i!r} is not an integer layer index")
        if i < 0 or i >= total:
            raise UsageError(f"{flag}: layer {i} is out of range; indices are 0-based, from 0 to {total - 1}")
    dupes = sorted({i for i in layers if layers.count(i) > 1})
    if dupes:
        raise UsageError(f"{flag}: layer {dupes[0]} is listed more than once")
    if len(layers) >= total:
        raise UsageError(f"{flag}: removing all {total} layers leaves no model; remove at most {total - 1}")
    return sorted(layers)


def _renumber(blocks: list[nn.Module], arch: Architecture) -> list[tuple[nn.Module, str, object]]:
    """Set each block's layer-index attributes to its new position; return the old values."""
    changed = []
    for new_idx, block in enumerate(blocks):
        for path in arch.layer_index_attrs:
            owner_path, _, attr = path.rpartition(".")
            owner = get_submodule(block, owner_path) if owner_path else block
            if owner is not None and hasattr(owner, attr):
                changed.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, new_idx)
    return changed


def _config_changes(config, arch: Architecture, removed: list[int], total: int) -> dict[str, object]:
    """New values of the config fields tied to the number and order of blocks."""
    keep = [i for i in range(total) if i not in set(removed)]
    changes: dict[str, object] = {arch.num_layers_field: len(keep)}
    for name in arch.per_layer_fields:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            changes[name] = type(value)(value[i] for i in keep)
    for name in arch.index_threshold_fields:
        value = getattr(config, name, None)
        if isinstance(value, int):
            changes[name] = sum(1 for i in keep if i < value)
    if arch.num_layers_field != "num_hidden_layers" and hasattr(config, "num_hidden_layers"):
        changes["num_hidden_layers"] = len(keep)
    return changes


def _apply(model: nn.Module, removed: list[int]):
    """Cut ``removed`` blocks; return what is needed to undo it."""
    arch = get_architecture(model)
    blocks = get_submodule(model, arch.layers)
    total = len(blocks)
    removed = validate_layers(removed, total)
    changes = _config_changes(model.config, arch, removed, total)
    old_config = {k: getattr(model.config, k, None) for k in changes}
    kept = [b for i, b in enumerate(blocks) if i not in set(removed)]
    set_submodule(model, arch.layers, nn.ModuleList(kept))
    for k, v in changes.items():
        setattr(model.config, k, v)
    old_indices = _renumber(kept, arch)
    return arch, blocks, old_config, old_indices


def _gpt2_inverse_layer_scaling(model: nn.Module, moves: list[tuple[nn.Module, int, int]]) -> None:
    """GPT-2 with ``scale_attn_by_inverse_layer_idx`` divides attention scores by (index + 1), fixed when
    the block is built. A block moved from index ``i`` to ``j`` would reload dividing by ``j + 1``: its
    query projection is multiplied by ``(j + 1) / (i + 1)`` and its ``scaling`` set to what a fresh
    block ``j`` computes, so the in-memory cut and the reloaded one both equal the original block."""
    config = model.config
    if not getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return
    for block, old, new in moves:
        if old == new:
            continue
        ratio = (new + 1) / (old + 1)
        for attn, query in ((block.attn, "c_attn"), (getattr(block, "crossattention", None), "q_attn")):
            if attn is None:
                continue
            proj, width = getattr(attn, query), attn.embed_dim
            with torch.no_grad():  # Conv1D: weight is (in, out); the query is the first embed_dim outputs
                proj.weight[:, :width].mul_(ratio)
                if proj.bias is not None:
                    proj.bias[:width].mul_(ratio)
            scaling = attn.head_dim ** -0.5 if getattr(attn, "scale_attn_weights", True) else 1.0
            attn.scaling = scaling / float(new + 1)


# Fixes named by architectures.json's ``index_dependent``: fn(model, [(block, old index, new index)]).
INDEX_FIXES = {"gpt2_inverse_layer_scaling": _gpt2_inverse_layer_scaling}


def drop_layers(model: nn.Module, *, layers: Iterable[int]) -> nn.Module:
    """Remove decoder blocks ``layers`` (0-based indices into the current model) **in place**.

    Renumbers the kept blocks' layer indices, slices per-layer config lists by the removed indices,
    updates the layer count and records the cut in ``model.config.prunescope_removed_layers``
    (indices of the original model, accumulated over repeated cuts). Blocks whose computation depends
    on their index (architectures.json ``index_dependent``, e.g. GPT-2's inverse-layer attention
    scaling) get that dependence baked into their weights, so the cut saves and reloads equal.
    Generation with a KV cache works afterwards. Returns the same model.
    """
    layers = list(layers)
    arch = get_architecture(model)
    current = get_submodule(model, arch.layers)
    kept_before = [(b, i) for i, b in enumerate(current) if i not in set(layers)]
    history = list(getattr(model.config, "prunescope_removed_layers", None) or [])
    original_total = len(get_submodule(model, get_architecture(model).layers)) + len(history)
    original_kept = [i for i in range(original_total) if i not in set(history)]
    _apply(model, layers)
    for name in arch.index_dependent:
        INDEX_FIXES[name](model, [(b, old, new) for new, (b, old) in enumerate(kept_before)])
    removed_now = [original_kept[i] for i in layers]
    model.config.prunescope_removed_layers = sorted(history + removed_now)
    return model


@contextlib.contextmanager
def skip_layers(model: nn.Module, *, layers: Iterable[int]) -> Iterator[nn.Module]:
    """Virtually remove blocks ``layers`` (0-based) inside the ``with`` block, then put them back.

    No weight is copied, so this is the cheap way to try many cuts during a search; inside the
    block the model gives the same logits as after ``drop_layers`` with the same indices.
    """
    arch, blocks, old_config, old_indices = _apply(model, list(layers))
    try:
        yield model
    finally:
        set_submodule(model, arch.layers, blocks)
        for k, v in old_config.items():
            setattr(model.config, k, v)
        for owner, attr, value in old_indices:
            setattr(owner, attr, value)
