"""``quant``: weight-only quantization at full depth — the answer to "cut a quarter of the layers, or keep all
of them at fewer bits?".

Schemes (``settings["scheme"]``), each through the maintained library that implements it, via transformers'
own quantization integration so the saved folder reloads with plain ``from_pretrained``:
- ``int8``: torchao ``Int8WeightOnlyConfig`` (per-channel symmetric int8 weights, activations in the model's
  dtype); runs on CPU. Reference: torchao, github:pytorch/ao ``torchao/quantization/quant_api.py``.
- ``int4``: torchao ``Int4WeightOnlyConfig`` (group size 128, bf16); needs torchao's CUDA kernels.
- ``nf4``: bitsandbytes 4-bit NormalFloat (Dettmers et al., QLoRA, 2023) with bf16 compute; needs CUDA.
The LM head (tied to the embedding in many small models) stays unquantized, as transformers' default
``modules_to_not_convert`` does for bitsandbytes. ``ratio`` is ignored: the budget is the bit width.

The model is written to a temporary folder and loaded back quantized, so ``compress`` returns a new model
for this method (the input model is left as it was).
"""
from __future__ import annotations

import tempfile

import torch

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method

SCHEMES = ("int8", "int4", "nf4")
REFERENCE = {"int8": "torchao Int8WeightOnlyConfig (github:pytorch/ao)",
             "int4": "torchao Int4WeightOnlyConfig (github:pytorch/ao)",
             "nf4": "bitsandbytes NF4, Dettmers et al. QLoRA (2023)"}


def quantization_config(scheme: str, *, device: str, group_size: int):
    """The transformers quantization config for ``scheme`` (a UsageError says what to install or use)."""
    if scheme not in SCHEMES:
        raise UsageError(f"--settings scheme={scheme}: choose one of {', '.join(SCHEMES)}")
    if scheme in ("int4", "nf4") and device != "cuda":
        raise UsageError(f"--settings scheme={scheme} needs a CUDA GPU; on CPU use scheme=int8")
    if scheme == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageError("scheme=nf4 needs bitsandbytes: pip install 'prunescope[gpu]'") from None
        from transformers import BitsAndBytesConfig
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError:
        raise UsageError(f"scheme={scheme} needs torchao: pip install 'prunescope[quant]'") from None
    from transformers import TorchAoConfig
    inner = Int8WeightOnlyConfig() if scheme == "int8" else Int4WeightOnlyConfig(group_size=group_size)
    return TorchAoConfig(inner, modules_to_not_convert=["lm_head"])


@register_method("quant", defaults={"scheme": "int8", "group_size": 128},
                 summary="weight-only quantization (torchao int8 on CPU; int4 / bitsandbytes NF4 on GPU)")
def quant(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed:
    """Quantize the weights of every linear layer but the LM head; returns a new model (see module docstring)."""
    from transformers import AutoModelForCausalLM

    from prunescope.study.efficiency import weight_bytes

    device = next(model.parameters()).device
    qconfig = quantization_config(settings["scheme"], device=device.type, group_size=settings["group_size"])
    dtype = torch.bfloat16 if settings["scheme"] in ("int4", "nf4") else next(model.parameters()).dtype
    before = weight_bytes(model)
    with tempfile.TemporaryDirectory(prefix="prunescope-quant-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        kwargs = {"device_map": {"": device.index or 0}} if device.type == "cuda" else {}
        qmodel = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qconfig, dtype=dtype, **kwargs)
    qmodel.eval()
    qmodel.prunescope_source = getattr(model, "prunescope_source", None)
    return Compressed(qmodel, {"reference": REFERENCE[settings["scheme"]], "weights_bytes_before": before,
                               "weights_bytes_after": weight_bytes(qmodel), "not_quantized": ["lm_head"]})
