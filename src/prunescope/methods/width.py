"""``width``: Minitron-style structured width pruning — MLP channels and (optionally) GQA groups of attention
heads removed by activation importance, to the parameter count of a given depth cut.

Reference: Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation" (Minitron,
NeurIPS 2024) and Sreenivas et al., "LLM Pruning and Distillation in Practice: The Minitron Approach" (2024);
the implementation in NVIDIA Model-Optimizer ``modelopt/torch/prune/plugins/mcore_minitron.py`` (Megatron
models only, so not reusable here). Importance is forward-only on calibration text: an MLP neuron scores the
magnitude of its activation (the input of ``down_proj``), a head the L2 norm of its attention output (the
input of ``o_proj``); the paper's best aggregation is the mean over the sequence, then the L2 norm over the
batch. Every layer is cut to the same width (one ``intermediate_size`` in the config), keeping its own top
channels, so the result is a standard checkpoint with a smaller config.

Attention: with grouped-query attention a query head cannot be removed alone without breaking the KV-sharing
ratio, so whole groups (one KV head and its query heads) are removed, ranked by the summed importance of
their query heads; ``heads`` is the fraction of groups to remove (0 by default, as in Minitron's Llama-3.1
and Mistral runs, which prune MLP and embedding channels only). Embedding-channel pruning is not implemented.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method

REFERENCE = ("Muralidharan et al., Minitron (NeurIPS 2024); Sreenivas et al., The Minitron Approach (2024); "
             "NVIDIA Model-Optimizer modelopt/torch/prune/plugins/mcore_minitron.py")
# Module names inside one block, for the architectures whose MLP is gate/up/down and attention q/k/v/o.
LAYOUT = {"mlp_in": ("mlp.gate_proj", "mlp.up_proj"), "mlp_out": "mlp.down_proj",
          "attn_in_q": "self_attn.q_proj", "attn_in_kv": ("self_attn.k_proj", "self_attn.v_proj"),
          "attn_out": "self_attn.o_proj"}
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


def _sub(block, path: str) -> nn.Linear:
    return block.get_submodule(path)


@torch.no_grad()
def importance(model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: MLP neuron importance (intermediate,) and query-head importance (heads,), aggregated as
    mean over the sequence (real tokens) then L2 over the batch."""
    from prunescope.models import get_layers

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    blocks = get_layers(model)
    mlp_acc = [[] for _ in blocks]
    head_acc = [[] for _ in blocks]
    state = {}
    hooks = []
    for i, block in enumerate(blocks):
        def mlp_hook(mod, args, i=i):
            a = args[0].abs().float()  # (B, S, I)
            mlp_acc[i].append((a * state["mask"]).sum(1) / state["mask"].sum(1))
        def head_hook(mod, args, i=i):
            a = args[0].float()
            a = a.view(*a.shape[:2], -1, head_dim).norm(dim=-1)  # (B, S, H)
            head_acc[i].append((a * state["mask"]).sum(1) / state["mask"].sum(1))
        hooks.append(_sub(block, LAYOUT["mlp_out"]).register_forward_pre_hook(mlp_hook))
        hooks.append(_sub(block, LAYOUT["attn_out"]).register_forward_pre_hook(head_hook))
    try:
        for b in batches:
            state["mask"] = b.attention_mask.unsqueeze(-1).float()
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    mlp = [torch.cat(x).norm(dim=0) for x in mlp_acc]
    heads = [torch.cat(x).norm(dim=0) for x in head_acc]
    return mlp, heads


def _sliced(lin: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output ``rows`` and input ``cols`` of ``lin`` (bias follows the rows)."""
    w = lin.weight.data
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data[rows] if rows is not None else lin.bias.data)
    return new


def _replace(block, path: str, new: nn.Module) -> None:
    owner, _, name = path.rpartition(".")
    setattr(block.get_submodule(owner), name, new)


def plan(config, num_blocks: int, target_removed: int, groups_to_remove: int) -> dict[str, int]:
    """How many KV groups and MLP channels each layer loses so that at least ``target_removed`` parameters
    go (the smallest MLP cut that reaches it: fewer than one channel per layer too many)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    g = heads // kv
    per_group = (2 * g + 2) * head_dim * hidden
    per_channel = 3 * hidden
    left = target_removed - num_blocks * groups_to_remove * per_group
    channels = max(0, math.ceil(left / (num_blocks * per_channel)))
    if channels >= inter:
        raise UsageError(f"--ratio: matching the depth cut would remove all {inter} MLP channels; use a smaller "
                         f"ratio or prune heads too (--settings heads=...)")
    return {"groups": groups_to_remove, "channels": channels, "per_group": per_group, "per_channel": per_channel}


@register_method("width", defaults={"heads": 0.0, "max_calib_tokens": 8192},
                 summary="Minitron: prune MLP channels (and GQA head groups) by activation importance")
def width(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed:
    """Prune MLP channels (and ``heads`` of the KV groups) to the parameter count of removing ``ratio`` of the
    blocks, in place. See the module docstring for the reference."""
    from prunescope.criteria.calibration import context_limit, load_calibration_texts, make_batches
    from prunescope.models import get_layers, num_layers
    from prunescope.pruning import count_for_ratio
    from prunescope.study.efficiency import parameter_counts

    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        raise UsageError(f"method width supports {', '.join(SUPPORTED)} (gate/up/down MLP, q/k/v/o attention); "
                         f"{cfg.model_type} is not one of them")
    if ratio is None:
        raise UsageError("method width needs --ratio (it matches the parameter count of that depth cut)")
    total = num_layers(model)
    counts = parameter_counts(model)
    k = count_for_ratio(ratio, total)
    target = counts["total"] - k * counts["per_block"]
    kv, heads = cfg.num_key_value_heads, cfg.num_attention_heads
    g = heads // kv
    groups = int(round(settings["heads"] * kv))
    if not 0 <= groups < kv:
        raise UsageError(f"--settings heads={settings['heads']} must leave at least one of the {kv} KV groups")
    p = plan(cfg, total, k * counts["per_block"], groups)
    texts = load_calibration_texts(calib, max_tokens=settings["max_calib_tokens"])
    batches = make_batches(tokenizer, texts, max_tokens=settings["max_calib_tokens"],
                           device=next(model.parameters()).device, seq_len=context_limit(model))
    was_training = model.training
    model.eval()
    mlp_imp, head_imp = importance(model, batches)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    new_inter = cfg.intermediate_size - p["channels"]
    kept_channels, kept_groups = [], []
    for i, block in enumerate(get_layers(model)):
        keep = torch.sort(torch.topk(mlp_imp[i], new_inter).indices).values
        kept_channels.append(keep.tolist())
        for path in LAYOUT["mlp_in"]:
            _replace(block, path, _sliced(_sub(block, path), rows=keep))
        _replace(block, LAYOUT["mlp_out"], _sliced(_sub(block, LAYOUT["mlp_out"]), cols=keep))
        if groups:
            group_score = head_imp[i].view(kv, g).sum(1)
            kg = torch.sort(torch.topk(group_score, kv - groups).indices).values
            kept_groups.append(kg.tolist())
            q_heads = (kg[:, None] * g + torch.arange(g)).flatten()
            q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
            kv_rows = (kg[:, None] * head_dim + torch.arange(head_dim)).flatten()
            _replace(block, LAYOUT["attn_in_q"], _sliced(_sub(block, LAYOUT["attn_in_q"]), rows=q_rows))
            for path in LAYOUT["attn_in_kv"]:
                _replace(block, path, _sliced(_sub(block, path), rows=kv_rows))
            _replace(block, LAYOUT["attn_out"], _sliced(_sub(block, LAYOUT["attn_out"]), cols=q_rows))
    cfg.intermediate_size = new_inter
    if groups:
        cfg.head_dim = head_dim  # kept explicit: hidden_size / heads no longer gives it
        cfg.num_attention_heads = heads - groups * g
        cfg.num_key_value_heads = kv - groups
    model.train(was_training)
    return Compressed(model, {
        "reference": REFERENCE, "depth_equivalent_layers": k, "target_parameters": target,
        "intermediate_size": [cfg.intermediate_size + p["channels"], new_inter],
        "kv_groups": [kv, kv - groups], "attention_heads": [heads, heads - groups * g],
        "kept_channels": kept_channels, "kept_groups": kept_groups or None,
        "importance": "mean over sequence of |activation| (MLP) / per-head L2 (attention), L2 over batch"})
