"""The compression-method registry and ``compress``: one entry point for every way of making a model smaller
or faster (depth pruning, span replacement, layer merging, width pruning, quantization, speculative drafts).

A method is ``fn(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed`` registered with
``@register_method("name", defaults={...})``; ``defaults`` lists every setting it accepts, so an unknown
setting is an error that names the known ones, and the record holds the settings actually used.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import torch.nn as nn

from prunescope.errors import UsageError
from prunescope.registry import Registry


@dataclasses.dataclass
class MethodSpec:
    fn: Callable
    defaults: dict[str, Any]
    summary: str


@dataclasses.dataclass
class Compressed:
    """A compressed model and what was done to it. ``record`` goes into ``prunescope.json``; ``draft`` is the
    speculative method's draft model (it shares its weights with ``model``)."""
    model: nn.Module
    record: dict[str, Any]
    draft: nn.Module | None = None


METHODS: Registry[MethodSpec] = Registry("compression method")


def register_method(name: str, *, defaults: dict[str, Any] | None = None, summary: str = ""):
    """Decorator: register ``fn(model, tokenizer, *, ratio, calib, settings, seed) -> Compressed`` as ``name``."""
    def add(fn):
        METHODS.register(name, MethodSpec(fn, dict(defaults or {}), summary or (fn.__doc__ or "").split("\n")[0]))
        return fn
    return add


def resolve_settings(name: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    """The method's defaults updated by ``settings``; an unknown key is a UsageError naming the known ones."""
    spec = METHODS.get(name)
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(spec.defaults))
    if unknown:
        known = ", ".join(sorted(spec.defaults)) or "none"
        raise UsageError(f"--settings: method {name!r} has no setting {unknown[0]!r}; its settings are: {known}")
    out = dict(spec.defaults)
    for key, value in settings.items():
        default = out[key]
        if isinstance(value, str) and default is not None and not isinstance(default, str):
            value = _coerce(key, value, default)
        out[key] = value
    return out


def _coerce(key: str, text: str, default: Any) -> Any:
    """A ``key=value`` string from the command line as the type of the default."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        return type(default)(text)
    except ValueError:
        raise UsageError(f"--settings {key}={text}: expected a {type(default).__name__}") from None


def parse_settings(text: str | None) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (values are typed later by the method's defaults)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--settings {part!r}: write settings as key=value pairs separated by commas")
        out[key.strip()] = value.strip()
    return out


def compress(model, tokenizer, method: str, *, ratio: float | None = None, calib=None,
             settings: dict[str, Any] | None = None, seed: int = 0, scoring: dict[str, Any] | None = None) -> Compressed:
    """Compress ``model`` **in place** with ``method`` (see ``METHODS.names()``) and return a ``Compressed``.

    ``ratio`` is the budget as a fraction of the decoder layers (0.25 = the size of cutting a quarter of the
    blocks); width pruning matches that parameter count, the speculative draft drops that many blocks, and
    quantization, whose budget is its bit width, ignores it. ``calib`` is calibration text as for criteria.
    ``scoring``, for methods that pick layers with a criterion (depth, speculative), is passed to
    ``methods.depth.choose_removed``: extra ``score_layers`` arguments, or a removal already chosen.
    """
    from prunescope.study.efficiency import parameter_counts

    spec = METHODS.get(method)
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise UsageError(f"--ratio {ratio} must be strictly between 0 and 1 (a fraction of the layers)")
    resolved = resolve_settings(method, settings)
    before = parameter_counts(model)["total"]
    extra = {"scoring": scoring} if "scoring" in inspect.signature(spec.fn).parameters else {}
    result = spec.fn(model, tokenizer, ratio=ratio, calib=calib, settings=resolved, seed=seed, **extra)
    record = {"method": method, "ratio": ratio, "settings": resolved, "seed": seed,
              "parameters_before": before, **result.record}
    record.setdefault("parameters_after", parameter_counts(result.model)["total"])
    result.record = record
    return result
