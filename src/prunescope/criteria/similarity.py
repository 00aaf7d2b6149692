"""Criteria from one forward pass: how much each block changes the hidden states.

Both use the block inputs recorded by forward pre-hooks (and the last block's output) rather than
``output_hidden_states``, whose last entry has the final norm applied in most architectures and so
would misjudge the last block. block_influence averages over real (non-padding) tokens; angular uses
each sequence's last non-padded token, as Gromov et al. and PruneMe do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prunescope.criteria.activations import capture
from prunescope.criteria.base import CriterionResult, ScoringContext, register_criterion


def _token_similarity(ctx: ScoringContext, pairs: list[tuple[int, int]], *,
                      last_token: bool = False) -> tuple[list[float], list[float]]:
    """For each (a, b): the mean of cos(h_a, h_b) and of arccos(cos) / pi, where ``h_p`` is the input of
    block ``p`` and ``h_L`` the output of the last block, over every real calibration token, or with
    ``last_token`` over the last non-padded token of each sequence. One forward pass per batch."""
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    angle_sums = torch.zeros(len(pairs), dtype=torch.float64)
    count = 0
    with torch.inference_mode():
        for batch in ctx.calibration_batches():
            _, inputs, _ = capture(ctx.model, batch, logits=False)
            real = batch.attention_mask.bool().to(inputs[0].device)
            if last_token:  # right padding: the last real token sits at length - 1
                last = real.sum(dim=1) - 1
                real = torch.zeros_like(real)
                real[torch.arange(real.shape[0], device=real.device), last] = True
            for k, (a, b) in enumerate(pairs):
                cos = F.cosine_similarity(inputs[a][real].float(), inputs[b][real].float(), dim=-1).clamp(-1, 1)
                sums[k] += cos.double().sum().cpu()
                angle_sums[k] += (torch.arccos(cos) / math.pi).double().sum().cpu()
            count += int(real.sum())
    return (sums / count).tolist(), (angle_sums / count).tolist()


@register_criterion("block_influence")
def block_influence(ctx: ScoringContext) -> CriterionResult:
    """ShortGPT (Men et al. 2024): BI_l = 1 - mean token cosine(input of block l, output of block l),
    averaged over every token of the calibration set (the paper's Eq. 1, E over tokens). A block that
    barely changes its input has low influence and is removed first."""
    total = ctx.total_layers
    cos, _ = _token_similarity(ctx, [(i, i + 1) for i in range(total)])
    return CriterionResult(scores=[1.0 - c for c in cos])


@register_criterion("angular")
def angular(ctx: ScoringContext) -> CriterionResult:
    """Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers", Eq. 7) as in PruneMe
    (github.com/arcee-ai/PruneMe, ``compute_block_similarity/utils.py``): d(l, n) = arccos(cos(h_l,
    h_{l+n})) / pi at the last non-padded token of each sequence, averaged over sequences, between the
    input of block l and the input of block l+n (``n = num_layers``, default 1).
    ``angular_tokens="all"`` (``--angular-tokens all``) averages over every token instead.

    Differences from PruneMe's script, which follow the paper instead: PruneMe reads transformers'
    ``hidden_states[1:]``, so it never considers a cut starting at block 0 and its last state has the
    final norm applied; here ``h_L`` is the last block's raw output and every start is considered. The cut is the contiguous
    block [l*, l*+n) with the smallest distance; ``order`` lists it first (ascending), then the other
    layers by score.

    Per-layer score: the smallest d(l, n) over all windows of n blocks that contain the layer, i.e. how
    cheaply the layer can be removed as part of some n-block cut. For n = 1 it is the angular distance
    between the block's input and output."""
    total = ctx.total_layers
    n = ctx.num_layers or 1
    _, dist = _token_similarity(ctx, [(l, l + n) for l in range(total - n + 1)],
                                last_token=ctx.angular_tokens == "last")
    scores = [min(dist[l] for l in range(max(0, i - n + 1), min(i, total - n) + 1)) for i in range(total)]
    best = min(range(len(dist)), key=lambda l: (dist[l], l))
    cut = list(range(best, best + n))
    rest = sorted((i for i in range(total) if i not in cut), key=lambda i: (scores[i], i))
    return CriterionResult(scores=scores, order=cut + rest,
                           info={"block_size": n, "cut_start": best, "distances": dist,
                                 "angular_tokens": ctx.angular_tokens})
