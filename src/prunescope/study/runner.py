"""The study: baseline -> scores -> pruned cells -> recovery -> efficiency -> ablation -> report.

Each stage writes its artifacts atomically and is skipped when they already exist, so a study
killed at any moment (``kill -9`` included) and started again recomputes nothing finished. A cell is
finished when its ``metrics.json`` exists; that file is always written last.

Run folder layout::

    study.json                       provenance: config, seeds, versions, start/end time
    baseline/metrics.json, samples.jsonl, efficiency.json
    scores/<criterion>.json          (angular: scores/angular-k<k>.json, one per layer count)
    cells/<criterion>-r<ratio>/      prunescope.json, metrics.json, samples.jsonl, efficiency.json,
                                     recovery-<method>/{train_log.jsonl, recover.json, metrics.json, ...}
    ablation/base.json, layer-<i>.json, ablation.json
    results.csv, report.md, report.html, figures/*.png
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prunescope.errors import UsageError
from prunescope.io import read_json, write_json
from prunescope.study.config import StudyConfig
from prunescope.study.stages import (ITERATIVE, PER_COUNT, Stages, call_evaluate, score_file, scoring_plan,
                                     validate_names)

log = logging.getLogger("prunescope.study")

# Config keys whose change makes finished artifacts of an earlier run invalid.
IDENTITY_KEYS = ("model", "dtype", "seed", "tasks", "limit", "scoring")


def cell_name(criterion: str, ratio: float) -> str:
    """Folder name of one pruned cell, e.g. ``block_influence-r0.2``."""
    return f"{criterion}-r{ratio:g}"


@dataclass
class Step:
    label: str
    done: Callable[[], bool]
    run: Callable[[], None]


class StudyRun:
    """One study in one folder; ``run()`` executes the steps that are not finished yet."""

    def __init__(self, config: StudyConfig, stages: Stages | None = None):
        self.config = config
        self.out = config.out_dir
        self.stages = (stages or Stages()).resolved()
        self._model = None
        self._tokenizer = None
        self._baseline_eff: dict | None = None

    # ---- the base model, loaded on first need so a finished study reruns in a blink ----
    @property
    def model(self):
        if self._model is None:
            cfg = self.config
            self._model, self._tokenizer = self.stages.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
            self._model.eval()
        return self._model

    @property
    def tokenizer(self):
        _ = self.model
        return self._tokenizer

    # ---- planning ----
    def num_layers(self) -> int:
        info = self.out / "study.json"
        if info.is_file():
            data = read_json(info)
            if data.get("num_layers") and data.get("config", {}).get("model") == self.config.model:
                return int(data["num_layers"])
        from prunescope.models import num_layers
        return num_layers(self.model)

    def removal_counts(self, total: int) -> dict[float, int]:
        from prunescope.pruning import count_for_ratio
        return {r: count_for_ratio(r, total, flag="ratios") for r in self.config.ratios}

    def plan(self) -> list[Step]:
        cfg, total = self.config, self.num_layers()
        counts = self.removal_counts(total)
        steps = [Step("eval baseline", lambda: (self.out / "baseline/metrics.json").is_file(), self.run_baseline)]
        for crit, k, file in scoring_plan(cfg.criteria, sorted(set(counts.values()))):
            path = self.out / "scores" / file
            label = f"score {crit}" + (f" (removing {k})" if crit in PER_COUNT | ITERATIVE else "")
            steps.append(Step(label, path.is_file, lambda c=crit, k=k, p=path: self.run_scores(c, k, p)))
        for crit in cfg.criteria:
            for r in cfg.ratios:
                cell = self.out / "cells" / cell_name(crit, r)
                steps.append(Step(f"eval {crit} r={r:g} ({counts[r]} of {total} layers)",
                                  (cell / "metrics.json").is_file,
                                  lambda c=crit, r=r, d=cell: self.run_cell(c, r, counts[r], total, d)))
        for crit, r in cfg.recovered_cells():
            for method in cfg.recovery.methods:
                rdir = self.out / "cells" / cell_name(crit, r) / f"recovery-{method}"
                steps.append(Step(f"recover {method} {crit} r={r:g}", (rdir / "metrics.json").is_file,
                                  lambda c=crit, r=r, m=method, d=rdir: self.run_recovery(c, r, counts[r], m, d)))
        if cfg.efficiency.enabled:
            steps.append(Step("efficiency base", (self.out / "baseline/efficiency.json").is_file,
                              self.run_base_efficiency))
            for k in sorted(set(counts.values())):
                cells = [self.out / "cells" / cell_name(c, r) for c in cfg.criteria for r in cfg.ratios
                         if counts[r] == k]
                steps.append(Step(f"efficiency {k} of {total} layers removed",
                                  lambda cs=cells: all((c / "efficiency.json").is_file() for c in cs),
                                  lambda cs=cells: self.run_efficiency(cs)))
        if cfg.ablation.enabled:
            for layer in range(total):
                path = self.out / "ablation" / f"layer-{layer:03d}.json"
                steps.append(Step(f"ablation layer {layer}", path.is_file,
                                  lambda i=layer, p=path: self.run_ablation_layer(i, p)))
        return steps

    # ---- stages ----
    def run_baseline(self) -> None:
        cfg = self.config
        call_evaluate(self.stages.evaluate, self.model, self.tokenizer, cfg.tasks, out_dir=self.out / "baseline",
                      **self.eval_kwargs())

    def eval_kwargs(self, *, baseline: bool = False, limit: int | None = None) -> dict:
        cfg = self.config
        kwargs = dict(limit=limit or cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size)
        if cfg.data:
            kwargs["data"] = cfg.data
        if baseline:
            kwargs["baseline"] = str(self.out / "baseline/metrics.json")
        return kwargs

    def run_scores(self, criterion: str, k: int | None, path: Path) -> None:
        cfg = self.config
        kwargs = dict(cfg.scoring)
        if criterion == "greedy_task" and "tasks" not in kwargs:
            # the study's own tasks (their calib split, disjoint from evaluation items) steer the search
            kwargs["tasks"] = [t for t in cfg.tasks if ":" not in t]
        if k is None:
            kwargs.pop("num_layers", None)
        result = self.stages.score_layers(self.model, self.tokenizer, criterion, num_layers=k, seed=cfg.seed,
                                          **kwargs)
        from prunescope.criteria import save_scores
        save_scores(result, path)

    def scores_path(self, criterion: str, k: int) -> Path:
        return self.out / "scores" / score_file(criterion, k)

    def removed_layers(self, criterion: str, k: int) -> list[int]:
        """The first ``k`` layers of the criterion's removal order, read from its scores file."""
        from prunescope.pruning import layers_from_order
        path = self.scores_path(criterion, k)
        scores = read_json(path)
        return layers_from_order(scores["order"], k, len(scores["scores"]), flag=str(path))

    def run_cell(self, criterion: str, ratio: float, k: int, total: int, cell: Path) -> None:
        from prunescope.pruning import skip_layers
        from prunescope.pruning.save import library_versions
        cfg = self.config
        removed = self.removed_layers(criterion, k)
        write_json(cell / "prunescope.json", {
            "base_model": cfg.model, "criterion": criterion, "ratio": ratio, "removed_layers": removed,
            "num_layers_before": total, "num_layers_after": total - k,
            "scores_file": f"scores/{score_file(criterion, k)}",
            "versions": library_versions()})
        if cfg.save_checkpoints and not (cell / "model" / "config.json").is_file():
            self._save_checkpoint(criterion, removed, total, cell / "model")
        with skip_layers(self.model, layers=removed):
            call_evaluate(self.stages.evaluate, self.model, self.tokenizer, cfg.tasks, out_dir=cell,
                          **self.eval_kwargs(baseline=True))

    def _save_checkpoint(self, criterion: str, removed: list[int], total: int, out: Path) -> None:
        from prunescope.pruning import drop_layers, save_pruned
        pruned = drop_layers(copy.deepcopy(self.model), layers=removed)
        save_pruned(pruned, self.tokenizer, out, base=self.config.model, removed=removed, num_layers_before=total,
                    criterion=criterion, overwrite=True)
        del pruned

    def run_recovery(self, criterion: str, ratio: float, k: int, method: str, rdir: Path) -> None:
        cfg, plan = self.config, self.config.recovery
        settings = dict(plan.settings)
        settings.setdefault("seed", cfg.seed)
        rconfig = self.stages.recover_config(method=method, **settings)
        summary = rdir / "recover.json"
        if not summary.is_file() or not (rdir / "merged" / "config.json").is_file():
            shared = self.out / "recovery-data" / "self_generated.jsonl"
            if shared.is_file() and not (rdir / shared.name).is_file():
                # teacher responses depend only on the base model and the prompts: generate them once
                rdir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared, rdir / shared.name)
            student = self._recovery_student(criterion, k, rconfig, rdir)
            self.stages.recover(student, self.tokenizer, teacher=self.model, teacher_tokenizer=self.tokenizer,
                                config=rconfig, out=rdir, overwrite=False, resume=True)
            del student
            if (rdir / shared.name).is_file() and not shared.is_file():
                from prunescope.io import write_text
                write_text(shared, (rdir / shared.name).read_text(encoding="utf-8"))
        recovered, _ = self.stages.load_model(str(rdir / "merged"), dtype=cfg.dtype, device=cfg.device)
        call_evaluate(self.stages.evaluate, recovered, self.tokenizer, cfg.tasks, out_dir=rdir,
                      **self.eval_kwargs(baseline=True))
        del recovered
        if not plan.keep_merged:  # only after metrics.json exists, so a kill here loses nothing
            for name in ("merged", "checkpoint", "student"):
                shutil.rmtree(rdir / name, ignore_errors=True)

    def _recovery_student(self, criterion: str, k: int, rconfig, rdir: Path):
        """The cut to recover: a copy of the base with the layers dropped or, for QLoRA, the cut saved to
        ``rdir/student`` and loaded back in 4-bit NF4 (the merge reloads it at 16 bits)."""
        from prunescope.pruning import drop_layers
        removed = self.removed_layers(criterion, k)
        if not getattr(rconfig, "qlora", False):
            return drop_layers(copy.deepcopy(self.model), layers=removed)
        from prunescope.models import get_layers
        from prunescope.recovery.loading import load_4bit
        if not (rdir / "student" / "config.json").is_file():
            self._save_checkpoint(criterion, removed, len(get_layers(self.model)), rdir / "student")
        return load_4bit(str(rdir / "student"))[0]

    def _efficiency(self, **extra) -> dict:
        e = self.config.efficiency
        return self.stages.measure_efficiency(self.model, self.tokenizer, prompt_tokens=e.prompt_tokens,
                                              new_tokens=e.new_tokens, repeats=e.repeats, warmup=e.warmup,
                                              batch_size=e.batch_size, seed=self.config.seed, **extra)

    def run_base_efficiency(self) -> None:
        write_json(self.out / "baseline/efficiency.json", {"measured_on": "baseline", **self._efficiency()})

    def run_efficiency(self, cells: list[Path]) -> None:
        """Cells with the same number of removed layers do the same work: measure once, on the first."""
        from prunescope.pruning import skip_layers
        base = read_json(self.out / "baseline/efficiency.json")
        meta = read_json(cells[0] / "prunescope.json")
        with skip_layers(self.model, layers=meta["removed_layers"]):
            result = self._efficiency(baseline=base)
        for cell in cells:
            write_json(cell / "efficiency.json", {"measured_on": cells[0].name, **result})

    def ablation_tasks(self) -> list[str]:
        return self.config.ablation.tasks or self.config.tasks

    def run_ablation_layer(self, layer: int, path: Path) -> None:
        from prunescope.pruning import skip_layers
        cfg = self.config
        base_path = self.out / "ablation" / "base.json"
        kwargs = self.eval_kwargs(limit=cfg.ablation.limit)
        if not base_path.is_file():
            write_json(base_path, self.stages.evaluate(self.model, self.tokenizer, self.ablation_tasks(), **kwargs))
        with skip_layers(self.model, layers=[layer]):
            metrics = self.stages.evaluate(self.model, self.tokenizer, self.ablation_tasks(), **kwargs)
        write_json(path, {"layer": layer, **metrics})

    def write_ablation_summary(self, total: int) -> None:
        """ablation/ablation.json: accuracy per layer skipped, per task, and the drop from the base."""
        folder = self.out / "ablation"
        base = read_json(folder / "base.json")
        layers = [read_json(folder / f"layer-{i:03d}.json") for i in range(total)]
        tasks = {}
        for name, info in base["tasks"].items():
            accs = [m["tasks"][name]["accuracy"] for m in layers]
            tasks[name] = {"kind": info["kind"], "n": info.get("n"), "chance": info.get("chance"),
                           "base_accuracy": info["accuracy"], "accuracy": accs,
                           "drop": [info["accuracy"] - a for a in accs]}
        write_json(folder / "ablation.json", {"limit": self.config.ablation.limit, "num_layers": total,
                                              "layers": list(range(total)), "tasks": tasks})

    # ---- the whole thing ----
    def check_previous(self) -> dict | None:
        """The earlier study.json in this folder, refusing one made with a different identity."""
        path = self.out / "study.json"
        if not path.is_file():
            return None
        old = read_json(path)
        mine = self.config.to_dict()
        for key in IDENTITY_KEYS:
            if old.get("config", {}).get(key) != mine.get(key):
                raise UsageError(f"{self.out} holds a study made with a different {key} "
                                 f"({old.get('config', {}).get(key)!r}); pass --overwrite to start over or "
                                 f"--out to use another folder")
        return old

    def run(self) -> Path:
        validate_names(self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        previous = self.check_previous()
        started = time.time()
        steps = self.plan()
        total = self.num_layers()
        pending = [s for s in steps if not s.done()]
        info = self._provenance(previous, total, resuming=bool(pending) and previous is not None)
        write_json(self.out / "study.json", info)
        if previous is not None and len(pending) < len(steps):
            log.info("resuming %s: %d of %d stages already finished", self.out, len(steps) - len(pending), len(steps))
        ran = 0
        for index, step in enumerate(steps, 1):
            if step.done():
                continue
            left = sum(1 for s in steps[index:] if not s.done())
            log.info("[%d/%d] %s  (%d left after this, %s elapsed)", index, len(steps), step.label, left,
                     _duration(time.time() - started))
            step.run()
            ran += 1
        if self.config.ablation.enabled and (ran or not (self.out / "ablation/ablation.json").is_file()):
            self.write_ablation_summary(total)
        from prunescope.report import build_report
        from prunescope.report.tables import write_results_csv
        write_results_csv(self.out)
        if ran or info.get("finished") is None:
            info["finished"] = _now()
            info["seconds"] = round(info.get("seconds", 0.0) + time.time() - started, 1)
            write_json(self.out / "study.json", info)
        paths = build_report(self.out)
        log.info("study finished in %s: %s", _duration(time.time() - started), paths["html"])
        return self.out

    def _provenance(self, previous: dict | None, total: int, resuming: bool) -> dict:
        from prunescope.pruning.save import library_versions
        import torch
        info = dict(previous or {})
        info.update({
            "name": self.config.name, "config": self.config.to_dict(), "num_layers": total,
            "seeds": {"study": self.config.seed, "evaluation": self.config.seed, "scoring": self.config.seed,
                      "recovery": self.config.recovery.settings.get("seed", self.config.seed)},
            "versions": {**library_versions(), "python": platform.python_version()},
            "host": {"platform": platform.platform(), "device": self.config.device,
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                     "cpu_threads": torch.get_num_threads()},
        })
        info.setdefault("started", _now())
        if resuming:
            info["finished"] = None
            info["resumed"] = [*previous.get("resumed", []), _now()]
        return info


def run_study(config: StudyConfig, *, stages: Stages | None = None) -> Path:
    """Run (or resume) the study described by ``config`` and return its run folder.

    Stages already finished in the folder (their artifacts exist) are skipped; see the module docstring
    for the layout. ``stages`` swaps the stage functions (load_model, score_layers, evaluate, recover,
    measure_efficiency), e.g. to count calls in tests.
    """
    return StudyRun(config, stages).run()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
