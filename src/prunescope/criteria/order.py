"""Criteria that need no data: fixed orders and the seeded random baseline."""
from __future__ import annotations

import random as _random

from prunescope.criteria.base import CriterionResult, ScoringContext, rank_scores, register_criterion


@register_criterion("reverse")
def reverse(ctx: ScoringContext) -> CriterionResult:
    """Remove the last layers first (Lu et al. 2024, "Reassessing Layer Pruning in LLMs").

    Scores are rank-based: layer ``i`` of ``L`` scores ``1 - i / (L - 1)``, so the last layer scores 0."""
    order = list(range(ctx.total_layers))[::-1]
    return CriterionResult(scores=rank_scores(order), order=order)


@register_criterion("random")
def random(ctx: ScoringContext) -> CriterionResult:
    """A seeded random removal order (the baseline every criterion should beat); rank-based scores."""
    order = list(range(ctx.total_layers))
    _random.Random(ctx.seed).shuffle(order)
    return CriterionResult(scores=rank_scores(order), order=order)
