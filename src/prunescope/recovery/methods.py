"""What trains: LoRA adapters, the last k blocks plus ``lm_head`` (partial), or every weight (full);
and how it fits: gradient checkpointing, float32 master weights for 16-bit models."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from prunescope.errors import UsageError
from prunescope.models import get_architecture, get_layers
from prunescope.models.architectures import get_submodule
from prunescope.registry import Registry

log = logging.getLogger(__name__)

METHODS: Registry = Registry("recovery method")


def lora_targets(model: nn.Module) -> list[str]:
    """The architecture's LoRA projection names that exist as linear layers in ``model``; a UsageError
    when there are none, since LoRA would then train nothing."""
    arch = get_architecture(model)
    wanted = set(arch.lora_targets)
    if not wanted:
        raise UsageError(f"--method lora: prunescope knows no LoRA target projections for model_type "
                         f"{arch.model_type!r}; add lora_targets to prunescope/models/architectures.json, or use "
                         f"--method partial or --method full")
    linear_types = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style projections
        linear_types += (Conv1D,)
    except ImportError:
        pass
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, linear_types) and name.rsplit(".", 1)[-1] in wanted})
    if not found:
        raise UsageError(f"--method lora: none of the LoRA targets for model_type {arch.model_type!r} "
                         f"({', '.join(sorted(wanted))}) is a linear layer in this model; fix lora_targets in "
                         f"prunescope/models/architectures.json, or use --method partial or --method full")
    return found


@METHODS.register("lora")
def prepare_lora(model: nn.Module, config):
    """Wrap ``model`` in peft LoRA adapters on every linear projection (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        from peft import prepare_model_for_kbit_training
        # peft's recipe for k-bit bases: norms in fp32, input grads on, checkpointing (non-reentrant) as asked.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing_on(model, config),
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


@METHODS.register("partial")
def prepare_partial(model: nn.Module, config):
    """Train the last ``config.partial_layers`` decoder blocks and ``lm_head`` (Lu et al. 2024,
    "Reassessing Layer Pruning in LLMs": lm_head + the last three layers recovered best); with tied
    embeddings the input embedding trains with ``lm_head``, since they are one tensor."""
    layers = get_layers(model)
    k = config.partial_layers
    if k > len(layers):
        raise UsageError(f"--partial-layers {k} is more than the model's {len(layers)} decoder blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(layers)[-k:]:
        for p in block.parameters():
            p.requires_grad_(True)
    head = get_submodule(model, get_architecture(model).lm_head or "")
    if head is None:
        raise UsageError("--method partial: this architecture has no lm_head entry in architectures.json; "
                         "use --method lora or --method full")
    for p in head.parameters():
        p.requires_grad_(True)
    return model


@METHODS.register("full")
def prepare_full(model: nn.Module, config):
    """Train every weight."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def checkpointing_on(model: nn.Module, config) -> bool:
    """``--gradient-checkpointing``: auto means on when the model sits on a GPU."""
    if config.gradient_checkpointing == "auto":
        return next(model.parameters()).device.type == "cuda"
    return config.gradient_checkpointing == "on"


def _enable_checkpointing(model: nn.Module, config) -> None:
    if getattr(model, "is_loaded_in_4bit", False) or not checkpointing_on(model, config):
        return  # k-bit models get it from prepare_model_for_kbit_training
    if not getattr(model, "supports_gradient_checkpointing", False):
        log.warning("--gradient-checkpointing: %s does not support it; training without",
                    type(model).__name__)
        return
    # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings are fine.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def _fp32_master(model: nn.Module, config) -> None:
    """Partial/full training of a 16-bit model: trainable weights move to float32 (the master copy the
    optimizer steps), and the forward runs under autocast to the model's dtype, so a step smaller than
    a bf16 ulp still changes the weight. ``restore_dtype`` casts back before saving."""
    dtype = next(model.parameters()).dtype
    if config.method == "lora" or config.master_weights != "fp32" or dtype not in (torch.float16, torch.bfloat16):
        return
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.prunescope_autocast = dtype


def autocast_dtype(model: nn.Module):
    """The dtype the forward autocasts to (None: no autocast)."""
    return getattr(model, "prunescope_autocast", None)


def restore_dtype(model: nn.Module) -> None:
    """Undo ``_fp32_master``: every weight back in the model's dtype (for saving and evaluation)."""
    dtype = getattr(model, "prunescope_autocast", None)
    if dtype is not None:
        model.to(dtype)
        del model.prunescope_autocast


def prepare(model: nn.Module, config):
    """Make the parameters of ``config.method`` trainable (LoRA returns a peft wrapper), turn on gradient
    checkpointing and float32 master weights as configured, and log the count."""
    _enable_checkpointing(model, config)
    model = METHODS.get(config.method)(model, config)
    _fp32_master(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("recovery method %s: %s of %s parameters train (%.2f%%)", config.method, f"{trainable:,}",
             f"{total:,}", 100 * trainable / max(total, 1))
    return model


def trainable_state(model: nn.Module) -> dict:
    """The trainable tensors by name (what a checkpoint needs to resume)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
