"""``merge``: LaCo (Layer Collapse) — consecutive blocks merged into one by adding their differences.

Reference: Yang et al., "LaCo: Large Language Model Pruning via Layer Collapse" (EMNLP Findings 2024),
github:yangyifei729/LaCo ``laco_llama-13b.ipynb``. ``merge_layers_return_model`` merges blocks
``l+1 .. l+m`` into block ``l`` as ``θ_l + Σ_k (θ_{l+k} − θ_l)`` for every linear projection (q, k, v, o,
gate, up, down; norms are kept from block ``l``) and deletes the merged blocks. The search starts at
``l = L − 1 − C`` and walks down: a merge is accepted when the mean cosine similarity between the original
and merged model's last hidden states (each sentence's states flattened) on a few calibration sentences
exceeds ``THRESHOLD``; after an accepted merge ``l`` moves down by ``INTERVAL``, after a rejected one by 1.
The notebook's values: ``MERGE_LAYERS`` C = 7, ``INTERVAL`` = 1, ``THRESHOLD`` = 0.45, and five English
Wikipedia sentence openings as calibration (the default here too).

Deviation (a setting): the reference stops only when ``l`` reaches the lowest layer; here merging also stops
once ``ratio`` of the blocks are gone, and a merge never removes more than the blocks left in the budget,
so the method fits the same budget as the others (``stop_at_budget=False`` runs the reference's loop).
"""
from __future__ import annotations

import numpy as np
import torch

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method

REFERENCE = "Yang et al., LaCo (EMNLP Findings 2024); github:yangyifei729/LaCo laco_llama-13b.ipynb"
# The reference notebook's calibration sentences (English Wikipedia openings).
LACO_SENTENCES = [
    "Mouron () is a commune in the Arde",
    "The 81st Mechanised Brigade () is a mechanised brigade of the Romanian Land Force",
    "There are 18 National Natural Landmarks in the U.S. state of Washington, out of nearly",
    "Torreorgaz is a municipality in the",
    "Copa Libertadores 1973 was won by defending champions Independiente of A",
]


def merged_parameters(block) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters LaCo merges: those of the block's projections (every module that is not a norm)."""
    out = []
    for mod_name, module in block.named_modules():
        if "norm" in type(module).__name__.lower() or "norm" in mod_name.lower().rsplit(".", 1)[-1]:
            continue
        for p_name, p in module.named_parameters(recurse=False):
            out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
    return out


@torch.no_grad()
def merge_into(base_block, others) -> None:
    """``θ_base += Σ_k (θ_k − θ_base)`` for every merged parameter, in place (the differences are taken
    against the base block's original weights, as the reference's copy-then-add does)."""
    params = dict(merged_parameters(base_block))
    original = {name: p.detach().clone() for name, p in params.items()}
    for other in others:
        other_params = dict(merged_parameters(other))
        for name, p in params.items():
            p.add_(other_params[name] - original[name])


@torch.no_grad()
def last_hidden(model, tokenizer, sentences: list[str]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    out = []
    for s in sentences:
        enc = tokenizer(s, return_tensors="pt").to(device)
        out.append(model(**enc, output_hidden_states=True, use_cache=False).hidden_states[-1][0].flatten().float())
    return out


def similarity(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """Mean over sentences of the cosine similarity of the flattened last hidden states."""
    return float(np.mean([torch.cosine_similarity(a[None], b[None]).item() for a, b in zip(reference, candidate)]))


@register_method("merge", defaults={"merge_layers": 7, "interval": 1, "threshold": 0.45, "lowest_layer": 0,
                                    "stop_at_budget": True},
                 summary="LaCo: collapse consecutive blocks into one while the output stays similar")
def merge(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed:
    """Collapse consecutive blocks (LaCo, see the module docstring) until ``ratio`` of them are gone, in place."""
    from prunescope.criteria.calibration import load_calibration_texts
    from prunescope.models import get_layers, num_layers
    from prunescope.pruning import count_for_ratio, drop_layers, skip_layers

    total = num_layers(model)
    budget = count_for_ratio(ratio, total) if ratio is not None else None
    if settings["stop_at_budget"] and budget is None:
        raise UsageError("method merge needs --ratio (or --settings stop_at_budget=false for the paper's loop)")
    c, interval, threshold = settings["merge_layers"], settings["interval"], settings["threshold"]
    if c < 2 or interval < 1:
        raise UsageError("--settings: merge_layers must be at least 2 and interval at least 1")
    sentences = LACO_SENTENCES if calib is None else load_calibration_texts(calib)
    was_training = model.training
    model.eval()
    reference = last_hidden(model, tokenizer, sentences)
    original_index = list(range(total))  # original block index of each current block
    merges, trials = [], []
    lay = total - 1 - c
    while lay >= settings["lowest_layer"]:
        removed_so_far = total - num_layers(model)
        if settings["stop_at_budget"] and removed_so_far >= budget:
            break
        m = min(c - 1, num_layers(model) - lay - 1)
        if settings["stop_at_budget"]:
            m = min(m, budget - removed_so_far)
        if m < 1:
            lay -= 1
            continue
        blocks = get_layers(model)
        base, others = blocks[lay], [blocks[lay + i] for i in range(1, m + 1)]
        saved = {k: v.detach().clone() for k, v in base.state_dict().items()}
        merge_into(base, others)
        with skip_layers(model, layers=range(lay + 1, lay + m + 1)):
            sim = similarity(reference, last_hidden(model, tokenizer, sentences))
        group = original_index[lay:lay + m + 1]
        trials.append({"base": original_index[lay], "merged": group[1:], "similarity": sim, "accepted": sim > threshold})
        if sim > threshold:
            drop_layers(model, layers=range(lay + 1, lay + m + 1))
            del original_index[lay + 1:lay + m + 1]
            merges.append({"into": group[0], "merged": group[1:], "similarity": sim})
            lay -= interval
            if lay >= num_layers(model):
                lay = num_layers(model) - 1 - c
        else:
            base.load_state_dict(saved)
            lay -= 1
    model.train(was_training)
    removed = sorted(i for g in merges for i in g["merged"])
    return Compressed(model, {
        "reference": REFERENCE, "merges": merges, "trials": trials, "removed_layers": removed,
        "num_layers_before": total, "num_layers_after": num_layers(model),
        "budget_layers": budget, "budget_reached": budget is None or len(removed) >= budget,
        "similarity_texts": "LaCo reference sentences" if calib is None else str(calib)})
