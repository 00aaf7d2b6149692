"""``replace``: LLM-Streamline — the most redundant contiguous span of blocks becomes one trained block.

Reference: Chen et al., "Streamlining Redundant Layers to Compress Large Language Models" (ICLR 2025),
github:RUCKBReasoning/LLM-Streamline. ``LLM_Streamline/get_cosine.py`` picks the span start ``j``
maximising the mean per-token cosine similarity of hidden states ``j`` and ``j + n`` on calibration text;
``train_lightweightnetwork.py`` initialises a decoder layer from the span's first layer and trains it with
MSE from the span's input to its output hidden states (AdamW lr 2e-4, weight decay 1e-3, cosine schedule
down to 5e-5 after 1% warm-up, gradient clipping at 5), keeping the state with the best validation loss;
``train_mseloss.py`` puts it in place of the span, so the result is a standard checkpoint with ``n - 1``
fewer blocks.

Deviations (recorded as settings): the reference trains one epoch over ~100k SlimPajama sequences; here the
calibration text is small, so training is ``steps`` optimiser steps cycling over it (one batch a step, no
gradient accumulation).

``replacement`` (a setting, ``layer`` by default) chooses the lightweight module:

* ``layer``: one decoder layer, as above (the reference's ``train_lightweightnetwork.py``).
* ``ffn``: a feed-forward network only. The reference's FFN (``examples/mlp_mseloss_train_without_memory_issue/
  modeling_llama.py``, class ``MLP``: Linear(d, 4d), ReLU, Linear(4d, d), no norm, no residual, with the
  architecture's ``LlamaMLP`` as the commented alternative) maps the span's input hidden states straight to
  its output hidden states. So that the result stays a standard checkpoint, the FFN here is the
  architecture's own MLP in the residual form a decoder layer computes, ``h + mlp(norm(h))``: the block
  that replaces the span keeps its attention weights but its attention output projection is zero (so
  attention adds nothing, and plain transformers loads and runs it unchanged), and only the FFN branch
  (``ffn`` modules of models/architectures.json: norm and MLP, initialised from the span's first layer)
  trains with the same MSE objective. Deviation from the reference, named: the residual parametrisation
  and the architecture's MLP (SwiGLU at the config's intermediate size for Llama) instead of a bare
  ReLU MLP of width 4d; the zeroed attention weights still count in the checkpoint's parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method
from prunescope.methods.hooks import block_input, call_block, capture_io

REPLACEMENTS = ("layer", "ffn")

REFERENCE = "Chen et al., LLM-Streamline (ICLR 2025); github:RUCKBReasoning/LLM-Streamline"


def calibration_batches(model, tokenizer, calib, *, max_tokens: int, batch_tokens: int):
    """Calibration text as padded batches of about ``batch_tokens`` tokens."""
    from prunescope.criteria.calibration import context_limit, load_calibration_texts, pack, tokenize_texts

    texts = load_calibration_texts(calib, max_tokens=max_tokens)
    seqs = tokenize_texts(tokenizer, texts, max_tokens=max_tokens, seq_len=context_limit(model))
    if not seqs:
        raise UsageError("the calibration set has no text with at least two tokens")
    device = next(model.parameters()).device
    return pack(tokenizer, [(s, [True] * len(s), 0) for s in seqs], device=device, batch_tokens=batch_tokens)


@torch.no_grad()
def span_similarity(model, batches, n: int) -> list[float]:
    """Mean per-token cosine similarity of hidden states ``j`` and ``j + n`` for every span start ``j``
    (sequence means averaged over sequences, as in the reference's ``get_cosine_similarity``)."""
    per_seq: list[torch.Tensor] = []
    for b in batches:
        hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True,
                   use_cache=False).hidden_states
        mask = b.attention_mask.bool()
        rows = []
        for j in range(len(hs) - n):
            cos = F.cosine_similarity(hs[j].float(), hs[j + n].float(), dim=-1)  # (batch, seq)
            rows.append((cos * mask).sum(1) / mask.sum(1))
        per_seq.append(torch.stack(rows, 1))  # (batch, spans)
    return torch.cat(per_seq).mean(0).tolist()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred[mask].float(), target[mask].float())


def _schedule(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` (the reference's scheduler.py)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def evaluate_block(block, calls, targets, masks) -> float:
    """Mean MSE of ``block`` on recorded calls."""
    with torch.no_grad():
        losses = [masked_mse(call_block(block, c), t, m).item() for c, t, m in zip(calls, targets, masks)]
    return sum(losses) / len(losses)


def ffn_only(model, block) -> list:
    """Switch ``block``'s attention off (its output projection set to zero, in place) and return the
    parameters of its feed-forward branch, the only ones that train (see the module docstring)."""
    from prunescope.models import get_architecture
    from prunescope.models.architectures import get_submodule

    arch = get_architecture(model)
    attn_out = get_submodule(block, arch.attn_out) if arch.attn_out else None
    branch = [get_submodule(block, name) for name in arch.ffn]
    if attn_out is None or not branch or any(m is None for m in branch):
        raise UsageError(f"--settings replacement=ffn: prunescope does not know where the attention output and the "
                         f"feed-forward branch of a {arch.model_type!r} block are; add attn_out and ffn to its entry "
                         f"in prunescope/models/architectures.json, or use replacement=layer")
    with torch.no_grad():
        for p in attn_out.parameters():
            p.zero_()
    return [p for m in branch for p in m.parameters()]


@register_method("replace", defaults={"steps": 200, "lr": 2e-4, "min_lr": 5e-5, "weight_decay": 1e-3,
                                      "max_grad_norm": 5.0, "warmup_fraction": 0.01, "valid_every": 5,
                                      "max_calib_tokens": 16384, "batch_tokens": 256, "replacement": "layer"},
                 summary="LLM-Streamline: replace the most redundant span by one trained decoder layer (or FFN)")
def replace(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed:
    """Replace the most similar-ends span of ``k + 1`` blocks (``k`` = ``ratio`` of the blocks) by one decoder
    layer trained on calibration activations, in place. See the module docstring for the reference."""
    from prunescope.models import get_layers, num_layers
    from prunescope.pruning import count_for_ratio, drop_layers

    if ratio is None:
        raise UsageError("method replace needs --ratio (the fraction of decoder layers to remove)")
    replacement = settings["replacement"]
    if replacement not in REPLACEMENTS:
        raise UsageError(f"--settings replacement={replacement}: choose one of {', '.join(REPLACEMENTS)} (layer: one "
                         f"decoder layer; ffn: a feed-forward network)")
    total = num_layers(model)
    k = count_for_ratio(ratio, total)
    n = k + 1
    if n > total:
        raise UsageError(f"--ratio {ratio}: replacing {n} of {total} layers by one leaves no span to keep")
    batches = calibration_batches(model, tokenizer, calib, max_tokens=settings["max_calib_tokens"],
                                  batch_tokens=settings["batch_tokens"])
    was_training = model.training
    model.eval()
    sims = span_similarity(model, batches, n)
    best = max(range(len(sims)), key=lambda j: sims[j])
    blocks = get_layers(model)
    with capture_io(blocks[best], blocks[best + n - 1]) as (calls, targets), torch.no_grad():
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    masks = [b.attention_mask.bool() for b in batches]
    # Every ``valid_every``-th batch is held out to choose the best state, as the reference's test split does.
    every = settings["valid_every"]
    valid = [i for i in range(len(batches)) if len(batches) > 1 and i % every == every - 1] or [0]
    train = [i for i in range(len(batches)) if i not in valid] or valid
    pick = lambda idx, xs: [xs[i] for i in idx]  # noqa: E731

    removed = list(range(best + 1, best + n))
    drop_layers(model, layers=removed)
    block = get_layers(model)[best]
    params = ffn_only(model, block) if replacement == "ffn" else list(block.parameters())
    v_calls, v_targets, v_masks = pick(valid, calls), pick(valid, targets), pick(valid, masks)
    mse_remove = sum(masked_mse(block_input(c), t, m).item() for c, t, m in zip(v_calls, v_targets, v_masks)) / len(valid)
    mse_init = evaluate_block(block, v_calls, v_targets, v_masks)
    best_loss, best_state = mse_init, {k_: v.detach().clone() for k_, v in block.state_dict().items()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps = settings["steps"]
    warmup = max(1, int(steps * settings["warmup_fraction"]))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    block.train()
    log = []
    with torch.enable_grad():
        for step in range(steps):
            if not order:
                order = [train[i] for i in torch.randperm(len(train), generator=gen).tolist()]
            i = order.pop()
            for group in opt.param_groups:
                group["lr"] = _schedule(step, steps, warmup, settings["lr"], settings["min_lr"])
            loss = masked_mse(call_block(block, calls[i]), targets[i], masks[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
            opt.step()
            if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
                block.eval()
                v = evaluate_block(block, v_calls, v_targets, v_masks)
                block.train()
                log.append({"step": step + 1, "train_mse": loss.item(), "valid_mse": v})
                if v < best_loss:
                    best_loss, best_state = v, {k_: t.detach().clone() for k_, t in block.state_dict().items()}
    block.load_state_dict(best_state)
    block.eval()
    model.train(was_training)
    for p in model.parameters():
        p.grad = None
    return Compressed(model, {
        "reference": REFERENCE, "span": [best, best + n - 1], "span_similarity": sims,
        "replacement": replacement,
        "replaced_by": (f"decoder layer initialised from layer {best}, trained with MSE" if replacement == "layer" else
                        f"FFN (h + mlp(norm(h))) initialised from layer {best}'s, trained with MSE, saved as a decoder "
                        f"layer whose attention output projection is zero"),
        "removed_layers": removed, "num_layers_before": total, "num_layers_after": num_layers(model),
        "valid_mse": {"remove_span": mse_remove, "initial": mse_init, "trained": best_loss},
        "train_log": log, "calib_batches": {"train": len(train), "valid": len(valid)}})
