"""``depth``: remove whole decoder blocks chosen by any registered criterion (the baseline of every comparison).

This is prunescope's layer pruning (``score_layers`` + ``drop_layers``) behind the method interface; the
criteria name their own references (ShortGPT, SLEB, Gromov et al., ...).
"""
from __future__ import annotations

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method

# Criteria whose search depends on how many blocks are cut (same set as ``prunescope prune``).
COUNT_AWARE = ("angular", "sleb", "greedy_task")


def choose_removed(model, tokenizer, *, ratio: float, criterion: str, calib, seed: int,
                   scoring: dict | None = None) -> tuple[list[int], dict]:
    """The 0-based blocks a ``criterion`` removes at ``ratio`` and the scores it computed.

    ``scoring`` holds extra ``score_layers`` arguments (e.g. ``calib_samples``, ``calib_seq_len``), or
    ``{"removed": [...], "source": ...}``: the removal a scoring run of the same criterion already chose
    (a study passes its own, so a method cell never scores again what a depth cell scored)."""
    from prunescope.criteria import score_layers
    from prunescope.models import num_layers
    from prunescope.pruning import count_for_ratio, layers_from_order

    total = num_layers(model)
    k = count_for_ratio(ratio, total)
    scoring = dict(scoring or {})
    if "removed" in scoring:
        removed = sorted(int(i) for i in scoring["removed"])
        if len(removed) != k or not all(0 <= i < total for i in removed):
            raise UsageError(f"the given removal {removed} is not {k} of the model's {total} layers (--ratio {ratio})")
        return removed, {"scores": None, "source": scoring.get("source", "given")}
    scores = score_layers(model, tokenizer, criterion, calib=scoring.pop("calib", calib), seed=seed, progress=False,
                          num_layers=k if criterion in COUNT_AWARE else None, **scoring)
    return layers_from_order(scores["order"], k, total, flag="--ratio"), scores


@register_method("depth", defaults={"criterion": "block_influence"},
                 summary="remove the least important decoder blocks (any criterion)")
def depth(model, tokenizer, *, ratio, calib, settings, seed, scoring=None) -> Compressed:
    """Remove ``ratio`` of the decoder blocks, least important first by ``settings["criterion"]``, in place."""
    from prunescope.models import num_layers
    from prunescope.pruning import drop_layers

    if ratio is None:
        raise UsageError("method depth needs --ratio (the fraction of decoder layers to remove)")
    before = num_layers(model)
    removed, scores = choose_removed(model, tokenizer, ratio=ratio, criterion=settings["criterion"], calib=calib,
                                     seed=seed, scoring=scoring)
    drop_layers(model, layers=removed)
    return Compressed(model, {"removed_layers": removed, "num_layers_before": before,
                              "num_layers_after": num_layers(model), "scores": scores["scores"], "scores_from": scores.get("source", "computed"),
                              "reference": "prunescope layer pruning; the criterion names its paper"})
