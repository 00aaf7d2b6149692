"""Criteria from the calibration loss: Shortened LLaMA's PPL and Taylor+ (Kim et al. 2024).

Reference: github.com/Nota-NetsPresso/shortened-llm, ``src/anal_block_sensitivity_ppl.py``,
``src/anal_block_sensitivity_taylor.py`` and ``src/block_prune.py`` (the "+" rule: blocks 0-3 and the
last two are removed from the pruning order unless ``--no_plus_heuristic``). Both criteria keep the
raw score per block in ``scores`` and apply the rule to ``order``: the protected blocks come last.
``plus_rule=False`` (``--no-plus-rule``) is the plain criterion.
"""
from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from prunescope.criteria.activations import mean_loss, model_logits, skip_scan
from prunescope.criteria.base import (CriterionResult, ScoringContext, plus_rule_layers, protected_order,
                                      register_criterion)
from prunescope.models.architectures import get_layers


def _plus(ctx: ScoringContext, scores: list[float], info: dict) -> CriterionResult:
    protected = plus_rule_layers(ctx.total_layers) if ctx.plus_rule else []
    return CriterionResult(scores=scores, order=protected_order(scores, protected),
                           info={**info, "plus_rule": ctx.plus_rule, "protected": protected})


@register_criterion("ppl")
def ppl(ctx: ScoringContext) -> CriterionResult:
    """PPL (``anal_block_sensitivity_ppl.py``): score_l = calibration loss with block l skipped minus the
    full model's loss (mean token negative log-likelihood; the reference sorts by the perplexity
    exp(loss), the same order). The "+" rule protects the first 4 and last 2 blocks. Uses the fast
    path: each candidate runs only the blocks after the skipped one."""
    batches = ctx.calibration_batches()
    total = ctx.total_layers
    with tqdm(total=total * len(batches), desc="ppl", disable=not ctx.progress, file=sys.stderr) as bar:
        base, skipped = skip_scan(ctx.model, batches, fast=ctx.fast, progress=bar)
    base_loss = mean_loss(base)
    losses = [mean_loss(skipped[i]) for i in range(total)]
    return _plus(ctx, [loss - base_loss for loss in losses], {"base_loss": base_loss, "skip_losses": losses})


def taylor_weights(block) -> list[tuple[str, torch.nn.Parameter]]:
    """The tensors Taylor scores: the block's parameters named ``*weight`` (linear and norm weights;
    the reference's ``"weight" in name`` filter, so biases are left out)."""
    return [(n, p) for n, p in block.named_parameters() if n.endswith("weight")]


@register_criterion("taylor")
def taylor(ctx: ScoringContext) -> CriterionResult:
    """Taylor+ (``anal_block_sensitivity_taylor.py``): for every weight element, the first-order loss
    change of zeroing it, |w * dL/dw|; a tensor scores the sum over its elements and a block the sum
    over its weight tensors (norm_power 1, sum reductions: the reference's defaults). L is the mean
    token loss over the whole calibration set (the reference's one batch of 10 samples). Gradients
    are accumulated in fp32 whatever the model's dtype. The "+" rule protects the first 4 and last 2
    blocks."""
    model = ctx.model
    blocks = get_layers(model)
    batches = ctx.calibration_batches()
    flags = {p: p.requires_grad for p in model.parameters()}
    weights = [taylor_weights(b) for b in blocks]
    wanted = {id(p) for ws in weights for _, p in ws}
    for p in model.parameters():  # gradients only where they are needed (not the large embedding/head)
        p.requires_grad_(id(p) in wanted)
        p.grad = None
    # fp32 accumulators for low-precision weights (fp32 weights accumulate in .grad directly)
    acc = {id(p): torch.zeros_like(p, dtype=torch.float32) for ws in weights for _, p in ws
           if p.dtype != torch.float32}
    total_tokens = sum(int(b.loss_mask[:, 1:].sum()) for b in batches)
    try:
        for batch in tqdm(batches, desc="taylor", disable=not ctx.progress, file=sys.stderr):
            logits = model_logits(model, batch)
            loss = _summed_nll(logits, batch) / total_tokens
            loss.backward()
            del logits, loss
            for ws in weights:
                for _, p in ws:
                    if id(p) in acc and p.grad is not None:
                        acc[id(p)] += p.grad.float()
                        p.grad = None
        scores = []
        with torch.no_grad():
            for ws in weights:
                score = 0.0
                for name, p in ws:
                    grad = acc.get(id(p), p.grad)
                    value = float((p.detach().float() * grad.float()).abs().sum()) if grad is not None else 0.0
                    score += value
                scores.append(score)
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
        acc.clear()
    return _plus(ctx, scores, {"tensors": [n for n, _ in weights[0]] if weights else []})


def _summed_nll(logits: torch.Tensor, batch) -> torch.Tensor:
    """Sum of negative log-likelihoods of the scored tokens (differentiable)."""
    targets = batch.input_ids[:, 1:].to(logits.device)
    mask = batch.loss_mask[:, 1:].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                            reduction="none").view_as(targets)
    return (nll * mask).sum()
