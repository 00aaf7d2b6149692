"""Criteria from the calibration loss: what skipping one block costs (PPL), and first-order Taylor."""
from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from prunescope.criteria.activations import mean_loss, model_logits, skip_scan
from prunescope.criteria.base import CriterionResult, ScoringContext, register_criterion
from prunescope.models.architectures import get_layers


@register_criterion("ppl")
def ppl(ctx: ScoringContext) -> CriterionResult:
    """Shortened LLaMA's PPL criterion (Kim et al. 2024): score_l = calibration loss with block l skipped
    minus the full model's loss (mean token negative log-likelihood; the perplexity ratio is exp(score)).
    Uses the fast path: each candidate runs only the blocks after the skipped one."""
    batches = ctx.calibration_batches()
    total = ctx.total_layers
    with tqdm(total=total * len(batches), desc="ppl", disable=not ctx.progress, file=sys.stderr) as bar:
        base, skipped = skip_scan(ctx.model, batches, fast=ctx.fast, progress=bar)
    base_loss = mean_loss(base)
    losses = [mean_loss(skipped[i]) for i in range(total)]
    return CriterionResult(scores=[loss - base_loss for loss in losses],
                           info={"base_loss": base_loss, "skip_losses": losses})


@register_criterion("taylor")
def taylor(ctx: ScoringContext) -> CriterionResult:
    """Shortened LLaMA's Taylor criterion (Kim et al. 2024): for each weight tensor W of a block,
    |sum(W * dL/dW)| (the first-order estimate of the loss change when W is zeroed), summed over the
    block's tensors. L is the mean token loss on the calibration set (one forward + backward)."""
    model = ctx.model
    blocks = get_layers(model)
    batches = ctx.calibration_batches()
    flags = {p: p.requires_grad for p in model.parameters()}
    block_params = {id(p) for p in blocks.parameters()}
    for p in model.parameters():  # gradients only where they are needed (not the large embedding/head)
        p.requires_grad_(id(p) in block_params)
        p.grad = None
    total_tokens = sum(int(b.loss_mask[:, 1:].sum()) for b in batches)
    try:
        for batch in tqdm(batches, desc="taylor", disable=not ctx.progress, file=sys.stderr):
            logits = model_logits(model, batch)
            loss = _summed_nll(logits, batch) / total_tokens
            loss.backward()
            del logits, loss
        scores = []
        with torch.no_grad():
            for block in blocks:
                score = 0.0
                for p in block.parameters():
                    if p.grad is not None:
                        score += float((p.detach().float() * p.grad.float()).sum().abs())
                scores.append(score)
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
    return CriterionResult(scores=scores)


def _summed_nll(logits: torch.Tensor, batch) -> torch.Tensor:
    """Sum of negative log-likelihoods of the scored tokens (differentiable)."""
    targets = batch.input_ids[:, 1:].to(logits.device)
    mask = batch.loss_mask[:, 1:].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                            reduction="none").view_as(targets)
    return (nll * mask).sum()
