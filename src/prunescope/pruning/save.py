"""Saving a pruned model as a checkpoint anyone can load with plain ``transformers``."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from prunescope.io import atomic_dir, write_json, write_text


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint, for provenance."""
    import importlib.metadata as md
    out = {}
    for name in ("prunescope", "torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def mergekit_yaml(base: str, removed: list[int], total: int, dtype: str = "bfloat16", note: str | None = None) -> str:
    """A mergekit passthrough config whose slices keep exactly the blocks not in ``removed``
    (``layer_range`` is end-exclusive, as in mergekit); ``note`` becomes a comment above it."""
    keep = [i for i in range(total) if i not in set(removed)]
    ranges: list[list[int]] = []
    for i in keep:
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    lines = ["# Reproduces this cut with mergekit: mergekit-yaml mergekit.yaml OUT_DIR"]
    if note:
        lines.append(f"# Note: {note}")
    lines.append("slices:")
    for a, b in ranges:
        lines += ["  - sources:", f"      - model: {base}", f"        layer_range: [{a}, {b}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
    return "\n".join(lines)


def model_card(meta: dict[str, Any]) -> str:
    """A short README.md for the pruned checkpoint."""
    removed = meta["removed_layers"]
    base = meta.get("base_model_resolved") or meta["base_model"]
    front = f"base_model: {base}\n" if meta.get("base_model_is_hub_id") else ""
    note = f"\nNote on the base model: {meta['base_model_note']}.\n" if meta.get("base_model_note") else ""
    params = meta.get("parameters")
    params = f"{params:,}" if isinstance(params, int) else "n/a"  # ``:,`` on the "n/a" default would raise
    return f"""---
{front}library_name: transformers
tags: [prunescope, layer-pruning, depth-pruning]
---
# {base} with {len(removed)} of {meta['num_layers_before']} decoder layers removed
{note}
Made with prunescope: removed layers (0-based) {removed}, chosen by `{meta.get('criterion') or 'explicit list'}`.
Layers before → after: {meta['num_layers_before']} → {meta['num_layers_after']}.
Parameters: {params}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
```

Depth pruning usually keeps more log-likelihood (classification) accuracy than generative
reasoning accuracy; evaluate both (`prunescope eval`) before shipping. `mergekit.yaml` rebuilds
this cut from the base model; `prunescope.json` records how it was made.
"""


def check_reloads_equal(model, folder: Path) -> None:
    """Reload ``folder`` with plain transformers (in the dtype it was saved in) and compare logits with
    ``model`` cast to that dtype on a short input; a UsageError (nothing saved) when they differ. Used for
    families prunescope only auto-detected, whose index-dependent behaviour the architecture table does not
    describe."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunescope.errors import UsageError
    from prunescope.models.checkpoint import cast_copy
    param = next(model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    ids = (torch.arange(8, device=param.device) * 7 + 3).remainder(vocab)[None]
    reloaded = AutoModelForCausalLM.from_pretrained(folder).to(param.device).eval()
    saved = next(reloaded.parameters()).dtype
    reference = model if saved == param.dtype else cast_copy(model, saved)
    with torch.no_grad():
        diff = float((reference(input_ids=ids, use_cache=False).logits.float()
                      - reloaded(input_ids=ids, use_cache=False).logits.float()).abs().max())
    del reloaded, reference
    tolerance = 1e-4 if saved == torch.float32 else 5e-2
    if not diff <= tolerance:
        raise UsageError(f"refusing to save: model_type {model.config.model_type!r} is not in prunescope's "
                         f"architecture table and the saved cut reloads with different logits (max difference "
                         f"{diff:.3g}); describe the family in prunescope/models/architectures.json")


def save_pruned(model, tokenizer, out: str | os.PathLike, *, base: str, removed: list[int], num_layers_before: int,
                criterion: str | None = None, scores: dict | None = None, overwrite: bool = False,
                dtype: str | None = "auto") -> Path:
    """Write a pruned model to ``out`` atomically: safetensors weights, config, tokenizer with its chat
    template, ``prunescope.json``, a ``README.md`` model card and a mergekit ``mergekit.yaml``.

    The weights are written in ``dtype``: ``auto`` is the base model's stored dtype (a GGUF file's type,
    a config's ``dtype``; else bfloat16, see ``models.checkpoint``); the model in memory is not changed.

    ``removed`` are 0-based indices of the base model's blocks. ``base`` is the model spec as typed;
    mergekit.yaml and the card name what mergekit can load (``models.loading.mergeable_base``).
    """
    from prunescope.models.checkpoint import checkpoint_dtype, save_weights
    from prunescope.models.loading import mergeable_base
    resolved, note, is_hub = mergeable_base(base)
    save_dtype, dtype_from = checkpoint_dtype(dtype, base, model)
    meta = {
        "base_model": base,
        "base_model_resolved": resolved,
        "base_model_is_hub_id": is_hub,
        "base_model_note": note,
        "removed_layers": sorted(removed),
        "num_layers_before": num_layers_before,
        "num_layers_after": num_layers_before - len(removed),
        "criterion": criterion,
        "scores": scores,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(save_dtype).replace("torch.", ""),
        "dtype_from": dtype_from,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        meta["dtype"] = save_weights(model, tmp, save_dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "prunescope.json", meta)
        write_text(tmp / "README.md", model_card(meta))
        write_text(tmp / "mergekit.yaml", mergekit_yaml(resolved, removed, num_layers_before, meta["dtype"], note))
        from prunescope.models.architectures import get_architecture
        if get_architecture(model).detected:
            check_reloads_equal(model, tmp)
    return Path(out)
