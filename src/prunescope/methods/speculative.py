"""``speculative``: the depth-pruned model as a self-speculative draft for the full model.

The draft is the full model with ``ratio`` of its blocks skipped (chosen by any criterion); it shares every
weight with the full model (no second copy). Generation uses transformers' assisted generation
(``generate(..., assistant_model=draft)``, Leviathan et al., "Fast Inference from Transformers via
Speculative Decoding", ICML 2023; the self-speculative form is Zhang et al., "Draft & Verify", ACL 2024):
greedy output is the full model's by construction, so quality is lossless and only speed changes. The
acceptance rate says how closely the pruned model tracks the full one while generating.

The draft's blocks are the full model's block objects seen through a thin wrapper that renumbers their
layer index only while the draft runs, so the draft's KV cache has one slot per kept block and the full
model's own indices are untouched.
"""
from __future__ import annotations

import collections
import copy
import time

import torch
import torch.nn as nn

from prunescope.errors import UsageError
from prunescope.methods.base import Compressed, register_method

REFERENCE = ("transformers assisted generation (Leviathan et al., ICML 2023); self-speculative drafts: "
             "Zhang et al., Draft & Verify (ACL 2024)")


class DraftBlock(nn.Module):
    """A block of the full model run at draft position ``index`` (its layer-index attributes are set for the
    call and restored after it)."""

    def __init__(self, block: nn.Module, index: int, attrs: list[str]):
        super().__init__()
        self.block, self.index, self.attrs = block, index, attrs

    def forward(self, *args, **kwargs):
        saved = []
        for path in self.attrs:
            owner_path, _, attr = path.rpartition(".")
            owner = self.block.get_submodule(owner_path) if owner_path else self.block
            if hasattr(owner, attr):
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, self.index)
        try:
            return self.block(*args, **kwargs)
        finally:
            for owner, attr, value in saved:
                setattr(owner, attr, value)


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing its parameters and children, with its own module/hook dictionaries."""
    twin = copy.copy(module)
    for name, value in list(vars(module).items()):
        if isinstance(value, dict) and name.startswith("_"):
            setattr(twin, name, type(value)(value) if not isinstance(value, collections.OrderedDict)
                    else collections.OrderedDict(value))
    return twin


def make_draft(model: nn.Module, *, removed: list[int]) -> nn.Module:
    """A draft model: ``model`` without blocks ``removed`` (0-based), sharing all weights with it."""
    from prunescope.models.architectures import get_architecture, get_submodule
    from prunescope.pruning.surgery import _config_changes, validate_layers

    arch = get_architecture(model)
    blocks = get_submodule(model, arch.layers)
    removed = validate_layers(removed, len(blocks), flag="--ratio")
    kept = [b for i, b in enumerate(blocks) if i not in set(removed)]
    config = copy.deepcopy(model.config)
    for key, value in _config_changes(model.config, arch, removed, len(blocks)).items():
        setattr(config, key, value)
    draft = _shallow(model)
    owner = draft
    path = arch.layers.split(".")
    for name in path[:-1]:  # copy the chain of modules that leads to the block list
        child = _shallow(owner._modules[name])
        owner._modules[name] = child
        owner = child
    owner._modules[path[-1]] = nn.ModuleList(DraftBlock(b, i, arch.layer_index_attrs) for i, b in enumerate(kept))
    for module in [draft, *[draft.get_submodule(".".join(path[:i + 1])) for i in range(len(path) - 1)]]:
        if getattr(module, "config", None) is model.config:
            module.config = config
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft


class CallCounter:
    """Counts forward calls of a module (for the acceptance rate)."""

    def __init__(self, module):
        self.calls = 0
        self._h = module.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))

    def remove(self):
        self._h.remove()


@torch.inference_mode()
def generate_both(model, draft, input_ids: torch.Tensor, *, max_new_tokens: int, assisted: bool,
                  eos: bool = False) -> tuple[torch.Tensor, dict]:
    """Greedy generation of ``max_new_tokens`` (with ``draft`` as assistant or plain); returns the new tokens
    and ``{seconds, target_calls, draft_calls}``."""
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0 if eos else max_new_tokens,
                  attention_mask=torch.ones_like(input_ids), pad_token_id=model.config.eos_token_id or 0)
    if assisted:
        kwargs["assistant_model"] = draft
    t, d = CallCounter(model), CallCounter(draft)
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    # Assisted generation calls the draft's generate with its own generation_config plus arguments, and
    # transformers warns about that combination on every call: nothing a user can act on.
    hf_logging.set_verbosity_error()
    try:
        start = time.perf_counter()
        out = model.generate(input_ids, **kwargs)
        seconds = time.perf_counter() - start
    finally:
        hf_logging.set_verbosity(verbosity)
        t.remove()
        d.remove()
    return out[:, input_ids.shape[1]:], {"seconds": seconds, "target_calls": t.calls, "draft_calls": d.calls}


def acceptance(new_tokens: int, stats: dict) -> float | None:
    """Accepted draft tokens per proposed one: each target call verifies a round and emits one token of its own
    besides the accepted drafts, so accepted = new tokens - target calls; each draft call proposes one token."""
    return (new_tokens - stats["target_calls"]) / stats["draft_calls"] if stats["draft_calls"] else None


@register_method("speculative", defaults={"criterion": "block_influence", "num_assistant_tokens": 5,
                                          "schedule": "constant", "confidence_threshold": 0.4},
                 summary="depth-pruned draft (shared weights) for lossless assisted generation")
def speculative(model, tokenizer, *, ratio, calib, settings, seed, scoring=None) -> Compressed:
    """Build a draft without ``ratio`` of the blocks (chosen by ``settings["criterion"]``); the model itself is
    unchanged. Generate with ``model.generate(ids, assistant_model=result.draft)``."""
    from prunescope.methods.depth import choose_removed
    from prunescope.models import num_layers

    if ratio is None:
        raise UsageError("method speculative needs --ratio (the fraction of layers the draft skips)")
    removed, scores = choose_removed(model, tokenizer, ratio=ratio, criterion=settings["criterion"], calib=calib,
                                     seed=seed, scoring=scoring)
    draft = make_draft(model, removed=removed)
    gc = draft.generation_config
    gc.num_assistant_tokens = settings["num_assistant_tokens"]
    gc.num_assistant_tokens_schedule = settings["schedule"]
    gc.assistant_confidence_threshold = settings["confidence_threshold"]
    return Compressed(model, {"reference": REFERENCE, "draft_removed_layers": removed,
                              "num_layers": num_layers(model), "draft_layers": num_layers(draft),
                              "scores": scores["scores"], "scores_from": scores.get("source", "computed"), "lossless": True}, draft=draft)


def measure_speculative(model, draft, tokenizer, prompts: list[str], *, new_tokens: int = 32, repeats: int = 3,
                        warmup: int = 1) -> dict:
    """Decode speed of assisted generation against plain greedy ``generate`` on the same prompts, both through
    ``generate`` so the harness is the same: median tokens/s over ``repeats`` rounds (after ``warmup``), each
    round's rates (``plain_all``, ``assisted_all``), the speedup's rank interval over them (``decode_interval``,
    ``prunescope.speed``; paired: the two arms alternate within every round), the acceptance rate, and whether
    every assisted output equals the plain one."""
    import statistics

    from prunescope.speed import ratio_interval

    device = next(model.parameters()).device
    encoded = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in prompts]
    rates = {False: [], True: []}
    accepted = proposed = 0
    identical = True
    for r in range(warmup + repeats):
        round_outs = {}
        for assisted in (False, True) if r % 2 == 0 else (True, False):  # alternate: a drift in load cancels
            seconds, outs = 0.0, []
            for ids in encoded:
                out, stats = generate_both(model, draft, ids, max_new_tokens=new_tokens, assisted=assisted)
                seconds += stats["seconds"]
                outs.append(out[0].tolist())
                if assisted and r >= warmup:
                    accepted += out.shape[1] - stats["target_calls"]
                    proposed += stats["draft_calls"]
            if r >= warmup:
                rates[assisted].append(sum(len(o) for o in outs) / seconds)
            round_outs[assisted] = outs
        identical &= round_outs[True] == round_outs[False]
    plain, spec = statistics.median(rates[False]), statistics.median(rates[True])
    return {"plain_tokens_per_s": plain, "assisted_tokens_per_s": spec, "decode_speedup": spec / plain,
            "plain_all": rates[False], "assisted_all": rates[True],
            "decode_interval": ratio_interval(rates[True], rates[False], paired=True),
            "acceptance_rate": accepted / proposed if proposed else None, "identical": identical,
            "prompts": len(prompts), "new_tokens": new_tokens, "repeats": repeats}
