"""The study's ``methods:`` axis: cells for compression methods beside the depth-pruning grid.

Each entry of the study config's ``methods`` list is a method name or ``{method, ratio, settings}``; a
name alone (or an entry without ``ratio``) runs at every study ratio (quant, whose budget is its bit width,
runs once). A cell ``cells/method-<name>-r<ratio>/`` holds ``prunescope.json`` (the method's record),
``metrics.json`` (the same tasks, items and statistics as every other cell) and ``efficiency.json`` (the
same ``measure_efficiency``; for ``speculative``, assisted against plain ``generate`` on the same prompts).
A speculative cell's metrics are the baseline's, copied: its greedy output is the full model's by
construction (tested token for token), and re-evaluating would only repeat the baseline run.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.io import read_json, write_json

SPECULATIVE_PROMPTS = ["Question: What is 23 + 48?\nAnswer:", "Write a Python function that reverses a string.\n",
                       "The three primary colours are", "Once upon a time, in a small village by the sea,"]


def method_specs(methods: list, ratios: list[float]) -> list[dict[str, Any]]:
    """Normalise the config's ``methods`` list to ``{method, ratio, settings}`` entries (validated)."""
    from prunescope.methods import METHODS, resolve_settings
    out, made = [], {}
    for i, entry in enumerate(methods or []):
        spec = {"method": entry} if isinstance(entry, str) else dict(entry or {})
        name = spec.get("method")
        if not isinstance(name, str):
            raise UsageError(f"methods[{i}]: give a method name or {{method: NAME, ratio: R, settings: {{...}}}}")
        if name not in METHODS:
            raise UsageError(f"methods[{i}]: {METHODS.unknown_message(name)}")
        unknown = set(spec) - {"method", "ratio", "settings"}
        if unknown:
            raise UsageError(f"methods[{i}]: unknown key {sorted(unknown)[0]!r}; use method, ratio, settings")
        settings = resolve_settings(name, spec.get("settings"))
        rs = [None] if name == "quant" else ([spec["ratio"]] if spec.get("ratio") is not None else list(ratios))
        for r in rs:
            if r is not None and not 0.0 < float(r) < 1.0:
                raise UsageError(f"methods[{i}]: ratio {r} must be strictly between 0 and 1")
            out.append({"method": name, "ratio": None if r is None else float(r), "settings": settings,
                        "given": dict(spec.get("settings") or {})})
            # two entries in one folder would overwrite each other's cell on every run
            cell = method_cell_name(out[-1])
            if made.setdefault(cell, i) != i:
                raise UsageError(f"methods[{i}]: makes the same cell {cell} as methods[{made[cell]}] (its name "
                                 f"does not show the settings that differ); keep one, or run the other with --out")
    return out


def _variant(spec: dict) -> str | None:
    """The setting that names a method's cell beside the method: quant's scheme, replace's FFN replacement."""
    settings = spec["settings"]
    if spec["method"] == "quant":
        return settings["scheme"]
    if spec["method"] == "replace" and settings.get("replacement", "layer") != "layer":
        return settings["replacement"]  # LLM-Streamline's FFN beside its layer replacement
    return None


def method_label(spec: dict) -> str:
    """``merge``, ``quant-int8``, ``speculative:block_influence``: the method as results.csv names it."""
    name, settings, variant = spec["method"], spec["settings"], _variant(spec)
    if variant:
        return f"{name}-{variant}"
    return f"{name}:{settings['criterion']}" if "criterion" in settings else name


def method_cell_name(spec: dict) -> str:
    r, variant = spec["ratio"], _variant(spec)
    return f"method-{spec['method']}" + (f"-{variant}" if variant else "") + (f"-r{r:g}" if r is not None else "")


def same_outputs_as_base(method: str, record: dict) -> str | None:
    """Why a compressed model answers exactly as the base does (None when it may not): a speculative draft is
    verified token by token by the full model; a LaCo merge that accepted no merge left the weights as they were."""
    if method == "speculative":
        return "speculative decoding is lossless: output equals the full model's"
    if method == "merge" and not record.get("merges"):
        return "no merge passed the similarity threshold: the weights are unchanged"
    return None


def study_scores_file(runner, spec: dict, *, exists: bool = True) -> Path | None:
    """The study's own scores file for the criterion a method picks layers with, when the study scores that
    criterion at the method's ratio (and, with ``exists``, the file is there)."""
    crit = spec["settings"].get("criterion")
    cfg = runner.config
    if crit is None or crit not in cfg.criteria or spec["ratio"] not in cfg.ratios:
        return None
    from prunescope.pruning import count_for_ratio
    path = runner.scores_path(crit, count_for_ratio(spec["ratio"], runner.num_layers()))
    return path if path.is_file() or not exists else None


def study_scoring(runner, spec: dict) -> dict:
    """What a method that picks layers with a criterion scores with: the removal the study's own scoring run
    chose (same criterion, same count), else the study's ``scoring:`` calibration settings."""
    path = study_scores_file(runner, spec)
    if path is None:
        return dict(runner.config.scoring)
    from prunescope.pruning import count_for_ratio
    k = count_for_ratio(spec["ratio"], runner.num_layers())
    return {"removed": runner.removed_layers(spec["settings"]["criterion"], k), "source": f"scores/{path.name}"}


def run_method_cell(runner, spec: dict, cell: Path, *, evaluate_fn) -> None:
    """Compress a copy of the study's model, evaluate it and measure its efficiency into ``cell``."""
    from prunescope.methods import compress
    from prunescope.methods.speculative import measure_speculative
    from prunescope.pruning.save import library_versions

    cfg = runner.config
    model = copy.deepcopy(runner.model)
    result = compress(model, runner.tokenizer, spec["method"], ratio=spec["ratio"], settings=spec["given"],
                      seed=cfg.seed, scoring=study_scoring(runner, spec))
    record = {k: v for k, v in result.record.items() if k not in ("train_log", "span_similarity", "scores", "trials",
                                                                     "kept_channels")}
    # results.csv keys rows by criterion and ratio; a method cell's criterion is its label (the method, with the
    # criterion that chose the layers where there is one), its ratio 0 when no layer budget applies (quant).
    from prunescope.models import num_layers
    total = runner.num_layers()
    write_json(cell / "prunescope.json", {**record, "base_model": cfg.model, "method": spec["method"],
                                          "criterion": method_label(spec), "ratio": spec["ratio"] or 0.0,
                                          "removed_layers": record.get("removed_layers") or [],
                                          "num_layers_before": total, "num_layers_after": num_layers(result.model),
                                          "versions": library_versions()})
    same_outputs = same_outputs_as_base(spec["method"], result.record)
    if same_outputs:  # evaluating again would only repeat the baseline's numbers
        for name in ("metrics.json", "samples.jsonl"):
            if (runner.out / "baseline" / name).is_file():
                shutil.copyfile(runner.out / "baseline" / name, cell / name)
        metrics = read_json(cell / "metrics.json")
        metrics["copied_from"] = f"baseline ({same_outputs})"
        write_json(cell / "metrics.json", metrics)
    else:
        evaluate_fn(result.model, cell)
    if cfg.efficiency.enabled:
        e = cfg.efficiency
        base = read_json(runner.out / "baseline" / "efficiency.json")
        if spec["method"] == "speculative":
            s = measure_speculative(result.model, result.draft, runner.tokenizer, SPECULATIVE_PROMPTS,
                                    new_tokens=e.new_tokens, repeats=e.repeats, warmup=e.warmup)
            # Same weights and prefill as the base; the decode rate is the base's times the speedup that
            # assisted generation measured against plain generate (same harness both ways).
            eff = {**{k: v for k, v in base.items() if k not in ("measured_on", "speedup", "decode_tokens_per_s_all")},
                   "decode_tokens_per_s": base["decode_tokens_per_s"] * s["decode_speedup"], "speculative": s,
                   "speedup": {"decode": s["decode_speedup"], "prefill": 1.0, "ideal": None, "parameters": 1.0,
                               "decode_interval": s.get("decode_interval")}}
        else:  # the base timed again here, rounds interleaved with the method's: same load on both (prunescope.speed)
            eff = runner.stages.measure_efficiency(result.model, runner.tokenizer, prompt_tokens=e.prompt_tokens,
                                                   new_tokens=e.new_tokens, repeats=e.repeats, warmup=e.warmup,
                                                   batch_size=e.batch_size, seed=cfg.seed, base=runner.model)
        write_json(cell / "efficiency.json", {"measured_on": cell.name, **eff})
    del model, result
