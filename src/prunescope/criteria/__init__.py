"""Layer-importance criteria: one score per decoder block (higher = more important) and a removal order.

``score_layers(model, tokenizer, "block_influence")`` returns the scores.json content; ``CRITERIA``
lists the criteria; a new one is one function decorated with ``@register_criterion("name")``.
"""
from prunescope.criteria.base import (CRITERIA, CriterionResult, ScoringContext, load_scores, register_criterion,
                                      save_scores, score_layers)
from prunescope.criteria import iterative, loss, order, similarity  # noqa: F401  (registers the criteria)

__all__ = ["CRITERIA", "CriterionResult", "ScoringContext", "load_scores", "register_criterion", "save_scores",
           "score_layers"]
