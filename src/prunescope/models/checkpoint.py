"""The dtype a saved cut is written in, and writing the weights in it.

A cut is saved in the dtype its source model is stored in (a bfloat16 model gives a bfloat16 checkpoint,
half the size of float32), whatever precision prunescope computed in: on a CPU the model is loaded in
float32, and casting back when saving loses nothing the source had. A quantized GGUF file is saved in
bfloat16 (it holds fewer bits per weight than that). ``--dtype`` overrides it.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from prunescope.errors import UsageError

# GGUF ``general.file_type`` (llama.cpp's LlamaFileType) -> the float dtype a dequantized copy is saved in.
# Float files keep their own type; a quantized file (Q4_1, Q8_0, K-quants...) holds fewer bits than
# bfloat16 per weight, so bfloat16 keeps all it has at half float32's size.
GGUF_FLOAT_TYPES = {0: torch.float32, 1: torch.float16, 32: torch.bfloat16}
FALLBACK = torch.bfloat16
NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES = ["auto", *NAMES]
DTYPE_HELP = ("weights dtype, for computing and for the saved checkpoint: auto computes in bfloat16 on a GPU and "
              "float32 on a CPU, and saves in the source model's dtype (a GGUF file's type, the config's dtype, "
              "else bfloat16); float32, bfloat16 or float16 do both in that dtype")


@functools.lru_cache(maxsize=8)
def gguf_dtype(path: str) -> tuple[torch.dtype, str]:
    """The dtype to save a model dequantized from the GGUF file ``path`` in, and why (its file type)."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return FALLBACK, "GGUF file without a file type"
    code = int(field.parts[field.data[0]][0])
    try:
        name = LlamaFileType(code).name
    except ValueError:
        name = f"type {code}"
    return GGUF_FLOAT_TYPES.get(code, FALLBACK), f"GGUF file type {name}"


def _config_dtype(config: dict) -> torch.dtype | None:
    value = config.get("dtype") or config.get("torch_dtype")
    return NAMES.get(str(value).replace("torch.", "")) if value else None


def source_dtype(spec: str) -> tuple[torch.dtype | None, str]:
    """The dtype the model named by ``spec`` is stored in, and where that was read: a GGUF file's type, a
    folder's or hub config's ``dtype``. None when neither says (an old config, an unreachable hub id)."""
    from prunescope.models.loading import DEFAULT_MODEL, default_model_gguf

    if spec == DEFAULT_MODEL:
        return gguf_dtype(str(default_model_gguf()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return gguf_dtype(str(path.resolve()))
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    else:
        try:  # a hub id: load_model fetched its config already, so the local cache answers
            from transformers import PretrainedConfig

            from prunescope.hub import hub_access
            with hub_access():
                config, _ = PretrainedConfig.get_config_dict(spec)
        except Exception:  # noqa: BLE001 - an unreadable config means "not stated"
            config = {}
    found = _config_dtype(config)
    return (found, "the source config's dtype") if found else (None, "the source does not state a dtype")


def checkpoint_dtype(requested: str | torch.dtype | None, base: str | None, model) -> tuple[torch.dtype, str]:
    """The dtype to save in and why: ``requested`` (a ``--dtype`` value) unless it is ``auto``/None, then
    the source model's (``base``); where the source states none, the model's own (nothing is rounded away)."""
    if isinstance(requested, torch.dtype):
        return requested, "asked for"
    if requested not in (None, "auto"):
        if requested not in NAMES:
            raise UsageError(f"--dtype {requested!r} is not one of {', '.join(CHOICES)}")
        return NAMES[requested], "asked for with --dtype"
    if base:
        found, why = source_dtype(base)
        if found is not None:
            return found, why
    return next(model.parameters()).dtype, "the model's dtype in memory (the source states none)"


def is_quantized(model) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


def save_weights(model, folder: Path, dtype: torch.dtype) -> str:
    """``model.save_pretrained(folder)`` with every floating-point weight in ``dtype`` and ``config.json``
    saying so (plain ``from_pretrained`` then loads that dtype). The model in memory is not changed; tied
    weights stay one tensor. A quantized model is saved as it is. Returns the dtype written, as a name."""
    current = next(model.parameters()).dtype
    if is_quantized(model) or dtype == current:
        model.save_pretrained(folder, safe_serialization=True)
        return str(current).replace("torch.", "")
    cast: dict[int, torch.Tensor] = {}  # by storage, so that tied weights stay shared

    def to(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        key = t.data_ptr()
        if key not in cast:
            cast[key] = t.detach().to(dtype)
        return cast[key]

    model.save_pretrained(folder, safe_serialization=True, state_dict={k: to(v) for k, v in model.state_dict().items()})
    name = str(dtype).replace("torch.", "")
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = name  # save_pretrained wrote the in-memory dtype
    config.pop("torch_dtype", None)
    from prunescope.io import write_json
    write_json(config_path, config)
    return name


def cast_copy(model, dtype: torch.dtype):
    """A copy of ``model`` with its weights in ``dtype``, as ``from_pretrained(dtype=...)`` would load them:
    parameters cast, buffers such as rotary frequencies left in float32 (``model.to`` would cast those too)."""
    import copy
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    return other
