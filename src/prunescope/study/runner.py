"""The study: baseline -> scores -> pruned cells -> recovery -> efficiency -> ablation -> report.

Each stage writes its artifacts atomically and is skipped when they exist and were made with the same
inputs (``steps.json``, see ``prunescope.study.steps``), so a study killed at any moment (``kill -9``
included) and started again recomputes nothing finished, and a changed setting never passes old numbers
off as new: the affected steps are refused, or recomputed with ``force``. A cell is finished when its
``metrics.json`` exists; that file is always written last.

Run folder layout::

    study.json                       provenance: config, seeds, versions, start/end time
    run.json, study.log              the trail: command line, config, versions, host, isolation, step timings; the log
    steps.json                       per step, the identity and inputs its artifacts were made with
    baseline/metrics.json, samples.jsonl, efficiency.json
    scores/<criterion>.json          (angular: scores/angular-k<k>.json, one per layer count)
    cells/<criterion>-r<ratio>/      prunescope.json, metrics.json, samples.jsonl, efficiency.json,
                                     recovery-<method>/{train_log.jsonl, recover.json, metrics.json, ...}
                                     (recovery-<method>-<loss>/ with a recovery.losses axis)
    ablation/base.json, layer-<i>.json, ablation.json
    results.csv, report.md, report.html, figures/*.png
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

from prunescope.errors import UsageError
from prunescope.io import read_json, write_json
from prunescope.study.config import StudyConfig
from prunescope.study.stages import Stages, call_evaluate, score_file, validate_names
from prunescope.study.steps import Manifest, Step, plan_text, step_line

log = logging.getLogger("prunescope.study")



# Recovery settings that change how the responses are trained on, not which responses the teacher writes.
TRAINING_ONLY = {"loss", "kd_topk", "kd_temperature", "kd_weight", "onpolicy_lambda", "onpolicy_beta",
                 "onpolicy_temperature", "onpolicy_max_new_tokens", "token_budget", "max_steps"}


def cell_name(criterion: str, ratio: float) -> str:
    """Folder name of one pruned cell, e.g. ``block_influence-r0.2``."""
    return f"{criterion}-r{ratio:g}"


class StudyRun:
    """One study in one folder; ``run()`` executes the steps that are not finished yet."""

    def __init__(self, config: StudyConfig, stages: Stages | None = None, *, progress: bool | None = None):
        self.config = config
        # progress bars only where someone watches them; a log file or CI gets one line per step
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.out = config.out_dir
        self.stages = (stages or Stages()).resolved()
        self._model = None
        self._tokenizer = None

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

    def common_inputs(self) -> dict:
        """Inputs every step shares: what model, at what precision, with which seed and code version."""
        from prunescope import __version__
        cfg = self.config
        return {"prunescope": __version__, "model": cfg.model, "dtype": cfg.dtype, "seed": cfg.seed}

    def eval_inputs(self) -> dict:
        cfg = self.config
        return {"tasks": list(cfg.tasks), "limit": cfg.limit, "data": cfg.data}

    def plan(self) -> list[Step]:
        """Every step of the study in order, each with the inputs that make its identity (``study.plan``)."""
        from prunescope.study.plan import plan_steps
        return plan_steps(self)

    # ---- stages ----
    def run_baseline(self) -> None:
        cfg = self.config
        call_evaluate(self.stages.evaluate, self.model, self.tokenizer, cfg.tasks, out_dir=self.out / "baseline",
                      **self.eval_kwargs())

    def eval_kwargs(self, *, baseline: bool = False, limit: int | None = None) -> dict:
        cfg = self.config
        kwargs = dict(limit=limit or cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size, progress=self.progress)
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
        # the count is the study's (from ratios), never a scoring setting: passed twice it was a TypeError
        kwargs.pop("num_layers", None)
        kwargs.setdefault("progress", self.progress)  # no carriage-return bars in a log file
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

    def equal_tokens_derived(self) -> bool:
        """Whether losses after the first take their token budget from the first one's run."""
        plan = self.config.recovery
        return plan.equal_tokens and len(plan.losses) > 1 and not plan.settings.get("token_budget")

    def run_recovery(self, criterion: str, k: int, method: str, rdir: Path, *, loss: str | None = None,
                     budget_from: Path | None = None) -> None:
        cfg, plan = self.config, self.config.recovery
        settings = dict(plan.settings)
        settings.setdefault("seed", cfg.seed)
        if loss is not None:
            settings["loss"] = loss
        if budget_from is not None:
            # equal budget: exactly the response tokens the first loss trained on, however many steps it takes
            settings["token_budget"] = int(read_json(budget_from / "recover.json")["response_tokens"])
            settings["max_steps"] = None
        rconfig = self.stages.recover_config(method=method, **settings)
        summary = rdir / "recover.json"
        if not summary.is_file() or not (rdir / "merged" / "config.json").is_file():
            # keyed by the settings that made the responses (not by the loss or budget, which train on them),
            # so changed settings never reuse old responses and the losses of one cell share them
            data_settings = {k_: v for k_, v in settings.items() if k_ not in TRAINING_ONLY}
            key = Step("", "", {**self.common_inputs(), **data_settings}, [], lambda: None).identity
            shared = self.out / "recovery-data" / key / "self_generated.jsonl"
            if shared.is_file() and not (rdir / shared.name).is_file():
                # teacher responses depend only on the base model and the prompts: generate them once
                rdir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared, rdir / shared.name)
            student = self._recovery_student(criterion, k, rconfig, rdir)
            # merged/ is evaluated below: written in the precision the study computes in, so that the
            # recovered cell's numbers are the trained weights' and not a rounding of them
            self.stages.recover(student, self.tokenizer, teacher=self.model, teacher_tokenizer=self.tokenizer,
                                config=rconfig, out=rdir, overwrite=False, resume=True,
                                dtype=next(self.model.parameters()).dtype)
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

    def _efficiency(self, model=None, **extra) -> dict:
        e = self.config.efficiency
        return self.stages.measure_efficiency(self.model if model is None else model, self.tokenizer,
                                              prompt_tokens=e.prompt_tokens,
                                              new_tokens=e.new_tokens, repeats=e.repeats, warmup=e.warmup,
                                              batch_size=e.batch_size, seed=self.config.seed, **extra)

    def run_base_efficiency(self) -> None:
        write_json(self.out / "baseline/efficiency.json", {"measured_on": "baseline", **self._efficiency()})

    def run_efficiency(self, cells: list[Path]) -> None:
        """Cells with the same number of removed layers do the same work: measure once, on the first. The base
        is timed again in the same call, its rounds interleaved with the cell's, so the speedup's interval
        compares rounds under the same machine load (prunescope.speed)."""
        from prunescope.pruning import skip_layers
        meta = read_json(cells[0] / "prunescope.json")
        result = self._efficiency(base=self.model,
                                  model=lambda: skip_layers(self.model, layers=meta["removed_layers"]))
        for cell in cells:
            write_json(cell / "efficiency.json", {"measured_on": cells[0].name, **result})

    def ablation_tasks(self) -> list[str]:
        return self.config.ablation.tasks or self.config.tasks

    def _ablation_eval(self, folder: Path) -> dict:
        """Evaluate the ablation tasks into ``folder``'s scratch space and return the metrics with each
        task's per-item results (``items: {task: {ids, correct}}``), so drops get paired intervals."""
        cfg = self.config
        scratch = folder.with_name(folder.name + ".eval")
        metrics = call_evaluate(self.stages.evaluate, self.model, self.tokenizer, self.ablation_tasks(),
                                out_dir=scratch, **self.eval_kwargs(limit=cfg.ablation.limit))
        items: dict[str, dict] = {}
        samples = scratch / "samples.jsonl"
        if samples.is_file():
            import json
            for line in samples.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    entry = items.setdefault(row["task"], {"ids": [], "correct": []})
                    entry["ids"].append(str(row["id"]))
                    entry["correct"].append(int(bool(row["correct"])))
        shutil.rmtree(scratch, ignore_errors=True)
        return {**metrics, "items": items}

    def run_ablation_layer(self, layer: int, path: Path) -> None:
        from prunescope.pruning import skip_layers
        with skip_layers(self.model, layers=[layer]):
            metrics = self._ablation_eval(path)
        write_json(path, {"layer": layer, **metrics})

    def write_ablation_summary(self, total: int) -> None:
        from prunescope.study.ablation import write_ablation_summary
        write_ablation_summary(self.out / "ablation", total, limit=self.config.ablation.limit, seed=self.config.seed)

    # ---- the whole thing ----
    def run(self, *, force: bool = False) -> Path:
        validate_names(self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / "study.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        level = log.level
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)  # the log file gets every step even when the terminal is quiet
        try:
            return self._run(force)
        finally:
            log.removeHandler(handler)
            handler.close()
            log.setLevel(level)

    def _check_stale(self, steps: list[Step], manifest: Manifest, force: bool) -> None:
        """Refuse (without ``force``) finished steps whose inputs changed; log what is recomputed and why."""
        stale = [s for s in steps if manifest.stale(s)]
        changed = [s for s in stale if s.key in manifest.entries]
        if changed and not force:
            keys = sorted({k for s in changed for k in manifest.reasons(s) if not k.startswith("after ")})
            labels = ", ".join(s.label for s in changed[:4]) + (", ..." if len(changed) > 4 else "")
            raise UsageError(f"{self.out} holds results made with a different {', '.join(keys) or 'configuration'}: "
                             f"{len(changed)} finished step(s) would change ({labels}); pass --force to recompute them "
                             f"and the steps that depend on them, --overwrite to start over, or --out to use another "
                             f"folder")
        for s in stale:
            log.info("recomputing %s: %s changed", s.label, ", ".join(manifest.reasons(s)))

    def _run(self, force: bool) -> Path:
        path = self.out / "study.json"
        previous = read_json(path) if path.is_file() else None
        started = time.time()
        steps = self.plan()
        total = self.num_layers()
        manifest = Manifest(self.out)
        self._check_stale(steps, manifest, force)
        pending = [s for s in steps if not manifest.done(s)]
        info = self._provenance(previous, total, resuming=bool(pending) and previous is not None)
        write_json(path, info)
        trail = self._trail(info)
        if previous is not None and len(pending) < len(steps):
            log.info("resuming %s: %d of %d steps already finished", self.out, len(steps) - len(pending), len(steps))
        ran, ablated = 0, False
        # compute of earlier attempts (study.json is rewritten after every step, so a killed attempt counts
        # up to its last finished step) plus this one's
        earlier = float(info.get("seconds") or 0.0)
        log.info("plan: %s", plan_text(pending, trail["steps"]))
        for index, step in enumerate(steps, 1):
            if manifest.done(step):
                continue
            todo = [s for s in steps[index - 1:] if not manifest.done(s)]
            log.info("%s", step_line(index, len(steps), step, todo, time.time() - started, trail["steps"]))
            if manifest.entries.get(step.key, {}).get("identity") != step.identity:
                step.clear()  # made under other inputs (or by a run without a record): never reuse a part of it
            manifest.record(step)  # before running, so a kill never leaves an old artifact under a new identity
            t0 = time.time()
            step.run()
            trail["steps"][step.key] = {"label": step.label, "seconds": round(time.time() - t0, 1), "work": step.work,
                                        "finished": _now()}
            write_json(self.out / "run.json", trail)
            info["seconds"] = round(earlier + time.time() - started, 1)
            write_json(path, info)
            ran += 1
            ablated = ablated or step.key.startswith("ablation/")
        if self.config.ablation.enabled and (ablated or not (self.out / "ablation/ablation.json").is_file()):
            self.write_ablation_summary(total)
        from prunescope.report import build_report
        from prunescope.report.tables import write_results_csv
        write_results_csv(self.out)
        if ran or info.get("finished") is None:
            info["finished"] = _now()
            info["seconds"] = round(earlier + time.time() - started, 1)
            write_json(path, info)
        isolation = self._isolation()
        if isolation and info.get("isolation") != next(iter(isolation.values())):
            info["isolation"] = next(iter(isolation.values()))  # one sandbox per run: the report states it
            write_json(path, info)
        paths = build_report(self.out)
        trail.update(finished=info["finished"], seconds=info.get("seconds"), isolation=isolation)
        write_json(self.out / "run.json", trail)
        log.info("study finished in %s: %s", _duration(time.time() - started), paths["html"])
        return self.out

    def _trail(self, info: dict) -> dict:
        """run.json: command line, config, versions, host, isolation, timings per step (kept across resumes)."""
        path = self.out / "run.json"
        old = read_json(path) if path.is_file() else {}
        program = Path(sys.argv[0]).name
        program = "prunescope" if program in ("__main__.py", "-m", "-c", "") else program  # python -m prunescope
        trail = {"command": [program, *sys.argv[1:]], "config": info["config"],
                 "versions": info["versions"], "host": info["host"], "started": info["started"],
                 "resumed": info.get("resumed", []), "finished": None, "seconds": info.get("seconds"),
                 "isolation": old.get("isolation"), "log": "study.log", "steps": old.get("steps", {})}
        write_json(path, trail)
        return trail

    def _isolation(self) -> dict | None:
        """How model-written code was contained, as the evaluation recorded it (tasks that run code only)."""
        path = self.out / "baseline" / "metrics.json"
        if not path.is_file():
            return None
        found = {name: m["isolation"] for name, m in read_json(path)["tasks"].items() if m.get("isolation")}
        return found or None

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


def run_study(config: StudyConfig, *, stages: Stages | None = None, force: bool = False,
              progress: bool | None = None) -> Path:
    """Run (or resume) the study described by ``config`` and return its run folder.

    Steps already finished in the folder with the same inputs (see ``prunescope.study.steps``) are skipped;
    a finished step whose inputs changed is refused with a message naming the change, or recomputed with
    everything that depends on it when ``force`` is set. See the module docstring for the layout.
    ``stages`` swaps the stage functions (load_model, score_layers, evaluate, recover, measure_efficiency),
    e.g. to count calls in tests.
    """
    return StudyRun(config, stages, progress=progress).run(force=force)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
