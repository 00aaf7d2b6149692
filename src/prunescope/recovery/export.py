"""Writing the recovered model: the LoRA adapter and a merged checkpoint plain transformers loads."""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from prunescope.io import atomic_dir, write_json

log = logging.getLogger(__name__)


def _merge(model, out: Path, source: str | None):
    """Fold the adapters into the base weights (in place). A 4-bit base is reloaded at 16 bits first,
    since merging into quantized weights would round the adapter away."""
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False) and source:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        log.info("QLoRA: merging the adapter into a bfloat16 copy of %s", source)
        full = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        return PeftModel.from_pretrained(full, out / "adapter").merge_and_unload()
    return model.merge_and_unload()


def export(model, tokenizer, out: Path, *, config, summary: dict, metadata: dict, source: str | None,
           dtype: str | None = "auto"):
    """Write ``adapter/`` (LoRA only) and ``merged/`` into ``out`` atomically; returns the merged model.
    ``merged/prunescope.json`` carries the pruned model's record plus a ``recovery`` entry. ``merged/`` is
    written in ``dtype``: ``auto`` is the dtype the pruned model (``source``) is stored in."""
    from prunescope.models.checkpoint import checkpoint_dtype, save_weights
    from prunescope.pruning.save import library_versions

    out = Path(out)
    if config.method == "lora":
        with atomic_dir(out / "adapter", overwrite=True) as tmp:
            model.save_pretrained(tmp)
        merged = _merge(model, out, source)
    else:
        merged = model
    record = dict(metadata) if metadata else {"source": source}
    record["recovery"] = {
        "config": config.to_dict(),
        "teacher": summary.get("teacher"),
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        "response_tokens": summary["response_tokens"],
        "final_loss": summary["final_loss"],
        "data": summary.get("data"),
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    save_dtype, dtype_from = checkpoint_dtype(dtype, source, merged)
    record["recovery"]["dtype_from"] = dtype_from
    with atomic_dir(out / "merged", overwrite=True) as tmp:
        record["dtype"] = save_weights(merged, tmp, save_dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "prunescope.json", record)
    return merged
