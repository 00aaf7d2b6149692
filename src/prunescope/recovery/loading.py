"""Loading a student for QLoRA: 4-bit NF4 weights through bitsandbytes (GPU only)."""
from __future__ import annotations

from prunescope.errors import UsageError


def _device() -> str:
    """Under ``accelerate launch`` each process loads onto its own GPU."""
    from accelerate import PartialState
    return str(PartialState().device)


def load_4bit(spec: str, device: str | None = None):
    """(model, tokenizer): the student in 4-bit NF4 with double quantization and bf16 compute, as the
    paper's QLoRA (bitsandbytes, GPU only). ``spec`` is a safetensors checkpoint (a saved cut)."""
    import torch
    if not torch.cuda.is_available():
        raise UsageError("--qlora needs a CUDA GPU (bitsandbytes 4-bit); drop --qlora on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError("--qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from prunescope.models.loading import resolve_source
    source, gguf = resolve_source(spec)
    if gguf:
        raise UsageError("--qlora loads safetensors checkpoints; convert the .gguf with prunescope prune first")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, device_map={"": device or _device()})
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.prunescope_source = spec
    return model, tokenizer
