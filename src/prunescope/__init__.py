"""prunescope: what does removing these layers cost — in classification, in generative reasoning,
and what does recovery buy back?

The public API is one function per pipeline stage (imported lazily so ``import prunescope`` is cheap)::

    model, tok = prunescope.load_model("smollm2-135m")
    scores = prunescope.score_layers(model, tok, "block_influence")
    prunescope.prune_layers(model, layers=scores["order"][:4])
    metrics = prunescope.evaluate(model, tok, ["arith_add_1d_gen", "arith_add_2d_mc"])
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "prunescope.models",
    "get_architecture": "prunescope.models",
    "drop_layers": "prunescope.pruning",
    "prune_layers": "prunescope.pruning",
    "skip_layers": "prunescope.pruning",
    "save_pruned": "prunescope.pruning",
    "score_layers": "prunescope.criteria",
    "compress": "prunescope.methods",
    "evaluate": "prunescope.eval",
    "recover": "prunescope.recovery",
    "run_study": "prunescope.study",
    "measure_efficiency": "prunescope.study",
    "build_report": "prunescope.report",
    "compare_runs": "prunescope.compare",
    "UsageError": "prunescope.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'prunescope' has no attribute {name!r}")
