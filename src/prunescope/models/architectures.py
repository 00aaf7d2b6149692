"""Architecture adapters as data: where each model family keeps its decoder blocks.

The table lives in ``architectures.json``; nothing else in prunescope hard-codes ``model.model.layers``.
Unknown families whose blocks sit in a recognisable ModuleList are detected with a warning.
"""
from __future__ import annotations

import functools
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from prunescope.errors import UsageError

log = logging.getLogger(__name__)

# Places where decoder blocks live in families we have not described; tried in order.
_CANDIDATE_LAYER_PATHS = ["model.layers", "model.decoder.layers", "transformer.h", "transformer.layers",
                          "gpt_neox.layers", "transformer.blocks", "model.transformer.h"]


@dataclass(frozen=True)
class Architecture:
    """Where the blocks and the config fields tied to them are, for one ``model_type``."""
    model_type: str
    layers: str
    final_norm: str | None
    embed: str | None
    lm_head: str | None
    num_layers_field: str = "num_hidden_layers"
    per_layer_fields: tuple[str, ...] = ()
    index_threshold_fields: tuple[str, ...] = ()
    layer_index_attrs: tuple[str, ...] = ("self_attn.layer_idx", "layer_idx")
    index_dependent: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()
    attn_out: str | None = None
    ffn: tuple[str, ...] = ()
    detected: bool = field(default=False, compare=False)


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    data = json.loads((Path(__file__).with_name("architectures.json")).read_text())
    data.pop("_doc", None)
    return data


def supported_model_types() -> list[str]:
    """The model families described in the adapter table."""
    return sorted(_table())


def get_architecture(model: nn.Module) -> Architecture:
    """The adapter for ``model`` (a CausalLM); auto-detects unknown families, or raises a UsageError."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    entry = _table().get(model_type)
    if entry is not None:
        return Architecture(model_type=model_type, **{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
    for path in _CANDIDATE_LAYER_PATHS:
        found = get_submodule(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            warnings.warn(f"model_type {model_type!r} is not in prunescope's architecture table; "
                          f"using the decoder blocks found at {path!r}. Check the results.", stacklevel=2)
            num_field = next((f for f in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, f)),
                             "num_hidden_layers")
            lists = tuple(k for k, v in config.to_dict().items()
                          if isinstance(v, list) and len(v) == len(found) and k not in ("architectures",))
            head = "lm_head" if get_submodule(model, "lm_head") is not None else None
            return Architecture(model_type=model_type, layers=path, final_norm=None, embed=None, lm_head=head,
                                num_layers_field=num_field, per_layer_fields=lists, detected=True)
    raise UsageError(
        f"unsupported architecture: model_type {model_type!r} has no decoder-block list prunescope recognises "
        f"(supported: {', '.join(supported_model_types())}); add an entry to prunescope/models/architectures.json")


def get_submodule(model: nn.Module, path: str | None):
    """Follow a dotted attribute path; None where any step is missing."""
    if not path:
        return None
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_submodule(model: nn.Module, path: str, value) -> None:
    """Set the attribute at a dotted path."""
    parent, _, name = path.rpartition(".")
    setattr(get_submodule(model, parent) if parent else model, name, value)


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks of ``model``."""
    return get_submodule(model, get_architecture(model).layers)


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks currently in ``model``."""
    return len(get_layers(model))
