"""``quant``: weight-only quantization at full depth — the answer to "cut a quarter of the layers, or keep all
of them at fewer bits?".

Schemes (``settings["scheme"]``), each through the maintained library that implements it, via transformers'
own quantization integration so the saved folder reloads with plain ``from_pretrained``:
- ``int8``: torchao ``Int8WeightOnlyConfig`` (per-channel symmetric int8 weights, activations in the model's
  dtype); runs on CPU. Reference: torchao, github:pytorch/ao ``torchao/quantization/quant_api.py``.
- ``int4``: 4-bit weights in groups (asymmetric, one scale and zero point per group), two weights per byte.
  On a GPU torchao ``Int4WeightOnlyConfig`` (tinygemm kernels, bf16); on a CPU torchao's
  ``PrototypeInt4WeightOnlyConfig`` (``Int4OpaqueTensor``: the same quantization, packed for PyTorch's CPU
  int4 matmul ``_weight_int4pack_mm_for_cpu``). Both compute in bfloat16, the kernels' own dtype, so the
  rest of the model (the LM head included) runs in bfloat16 too (``compute_dtype`` in the record).
  transformers cannot save the CPU layout, so on a CPU this scheme is measured in memory (a study cell) and
  ``compress --out`` refuses it.
- ``nf4``: bitsandbytes 4-bit NormalFloat (Dettmers et al., QLoRA, 2023) with bf16 compute; needs CUDA.
The LM head (tied to the embedding in many small models) stays unquantized, as transformers' default
``modules_to_not_convert`` does for bitsandbytes. ``ratio`` is ignored: the budget is the bit width.
``group_size`` (int4) ``auto`` is the largest of 128, 64, 32 that divides the input width of every
linear layer, since torchao silently leaves a layer whose width it does not divide in full precision; a
group size given explicitly that leaves any layer unquantized is refused.

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
             "int4": "torchao Int4WeightOnlyConfig, PrototypeInt4WeightOnlyConfig on CPU (github:pytorch/ao)",
             "nf4": "bitsandbytes NF4, Dettmers et al. QLoRA (2023)"}


def quantization_config(scheme: str, *, device: str, group_size: int):
    """The transformers quantization config for ``scheme`` (a UsageError says what to install or use)."""
    if scheme not in SCHEMES:
        raise UsageError(f"--settings scheme={scheme}: choose one of {', '.join(SCHEMES)}")
    if scheme == "nf4" and device != "cuda":
        raise UsageError("--settings scheme=nf4 needs a CUDA GPU; on CPU use scheme=int8 or scheme=int4")
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
    if scheme == "int8":
        inner = Int8WeightOnlyConfig()
    elif device == "cuda":
        inner = Int4WeightOnlyConfig(group_size=group_size)
    else:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        inner = PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    return TorchAoConfig(inner, modules_to_not_convert=["lm_head"])


GROUP_SIZES = (128, 64, 32)  # torchao's default first; smaller groups where it does not divide


def quantized_linear_widths(model) -> dict[str, int]:
    """Input width of every linear layer the scheme quantizes (all but the LM head), by module name."""
    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"}


def choose_group_size(model, asked) -> int:
    """``asked``, or for ``auto`` the largest of ``GROUP_SIZES`` dividing every quantized layer's input
    width; a UsageError when the group size leaves a layer unquantized."""
    widths = quantized_linear_widths(model)
    if asked == "auto":
        for size in GROUP_SIZES:
            if all(w % size == 0 for w in widths.values()):
                return size
        found = ", ".join(sorted({str(w) for w in widths.values()}))
        raise UsageError(f"scheme=int4: no group size of {', '.join(map(str, GROUP_SIZES))} divides every linear "
                         f"layer's input width ({found}); use scheme=int8")
    try:
        size = int(asked)
    except (TypeError, ValueError):
        raise UsageError(f"--settings group_size={asked}: give a whole number such as 128, or auto") from None
    bad = sorted(name for name, w in widths.items() if w % size)
    if size <= 0 or bad:
        raise UsageError(f"--settings group_size={asked} does not divide the input width of {len(bad)} linear "
                         f"layer(s) (e.g. {bad[0] if bad else '-'}), which would stay unquantized; use group_size=auto")
    return size


@register_method("quant", defaults={"scheme": "int8", "group_size": "auto"},
                 summary="weight-only quantization (torchao int8 and int4; bitsandbytes NF4 on GPU)")
def quant(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed:
    """Quantize the weights of every linear layer but the LM head; returns a new model (see module docstring)."""
    from transformers import AutoModelForCausalLM

    from prunescope.study.efficiency import weight_bytes

    device = next(model.parameters()).device
    scheme = settings["scheme"]
    group_size = choose_group_size(model, settings["group_size"]) if scheme == "int4" else None
    qconfig = quantization_config(scheme, device=device.type, group_size=group_size)
    # the 4-bit kernels compute in bf16 (PyTorch's CPU int4 matmul is ~100x slower on float32 activations)
    dtype = torch.bfloat16 if scheme in ("int4", "nf4") else next(model.parameters()).dtype
    before = weight_bytes(model)
    with tempfile.TemporaryDirectory(prefix="prunescope-quant-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        kwargs = {"device_map": {"": device.index or 0}} if device.type == "cuda" else {}
        qmodel = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qconfig, dtype=dtype, **kwargs)
    qmodel.eval()
    qmodel.prunescope_source = getattr(model, "prunescope_source", None)
    record = {"reference": REFERENCE[scheme], "weights_bytes_before": before,
              "weights_bytes_after": weight_bytes(qmodel), "not_quantized": ["lm_head"],
              "compute_dtype": str(dtype).replace("torch.", "")}
    if group_size is not None:
        record["group_size"] = group_size
    if scheme == "int4" and device.type != "cuda":
        record["not_saveable"] = ("transformers cannot save torchao's CPU int4 layout; measure it in a study "
                                  "(methods: [{method: quant, settings: {scheme: int4}}]), or compress on a GPU")
    return Compressed(qmodel, record)
