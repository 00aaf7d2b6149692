"""Writing a compressed model: a checkpoint plain ``transformers`` loads, ``prunescope.json`` and a model card."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from prunescope.errors import UsageError
from prunescope.io import atomic_dir, write_json, write_text

LOAD_NOTES = {
    "quant": "Loading needs the quantization library named in `config.json` (torchao or bitsandbytes).",
    "speculative": ("These are the full model's weights (generation is lossless). Build the draft that shares "
                    "them with `prunescope.methods.make_draft(model, removed=DRAFT_REMOVED_LAYERS)` and generate "
                    "with `model.generate(ids, assistant_model=draft)`."),
    "replace": "One decoder layer was trained to stand in for the replaced span; it is a standard layer.",
}


def describe(record: dict) -> str:
    """One sentence saying what the method did."""
    m = record["method"]
    if m == "depth":
        return f"removed decoder layers (0-based) {record['removed_layers']} chosen by `{record['settings']['criterion']}`"
    if m == "replace":
        a, b = record["span"]
        return f"replaced decoder layers {a}-{b} (0-based) by one decoder layer trained with MSE (LLM-Streamline)"
    if m == "merge":
        return "merged " + "; ".join(f"layers {g['merged']} into {g['into']}" for g in record["merges"]) + " (LaCo)" \
            if record["merges"] else "no merge passed LaCo's similarity threshold"
    if m == "width":
        return (f"pruned MLP width {record['intermediate_size'][0]} -> {record['intermediate_size'][1]} and KV groups "
                f"{record['kv_groups'][0]} -> {record['kv_groups'][1]} (Minitron-style activation importance)")
    if m == "quant":
        return f"quantized linear weights with scheme `{record['settings']['scheme']}` ({record['reference']})"
    if m == "speculative":
        return f"full model with a self-speculative draft skipping layers {record['draft_removed_layers']}"
    return m


def model_card(record: dict) -> str:
    """README.md for a compressed checkpoint."""
    before, after = record["parameters_before"], record["parameters_after"]
    return f"""---
base_model: {record['base_model']}
library_name: transformers
tags: [prunescope, compression, {record['method']}]
---
# {record['base_model']} compressed with `{record['method']}`

Made with prunescope: {describe(record)}.
Reference: {record.get('reference', 'n/a')}.
Parameters: {before:,} -> {after:,}.
{LOAD_NOTES.get(record['method'], '')}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
```

Compression usually keeps more log-likelihood (classification) accuracy than generative reasoning accuracy;
evaluate both (`prunescope eval`) before shipping. `prunescope.json` records how this was made.
"""


def save_compressed(result, tokenizer, out: str | os.PathLike, *, base: str, overwrite: bool = False,
                    dtype: str | None = "auto") -> Path:
    """Write ``result`` (a ``Compressed``) to ``out`` atomically: weights (safetensors), config, tokenizer,
    ``prunescope.json`` (the method's record) and ``README.md``. Weights are written in ``dtype`` (``auto``:
    the base model's stored dtype, see ``models.checkpoint``; a quantized model is saved as it is)."""
    from prunescope.models.checkpoint import checkpoint_dtype, is_quantized, save_weights
    from prunescope.pruning.save import library_versions

    if result.record.get("not_saveable"):
        method, why = result.record["method"], result.record["not_saveable"]
        raise UsageError(f"--out: this {method} model cannot be saved: {why}")
    save_dtype, dtype_from = checkpoint_dtype(dtype, base, result.model)
    record = {"base_model": base, **result.record, "dtype_from": dtype_from, "versions": library_versions(),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        record["dtype"] = save_weights(result.model, tmp, save_dtype)
        if is_quantized(result.model):
            record["dtype_from"] = "quantized weights are saved as they are"
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "prunescope.json", record)
        write_text(tmp / "README.md", model_card(record))
    return Path(out)
