"""The study runner's own logic (study/runner.py) with cheap stage functions: the steps planned for a config
(counted by hand), which steps a rerun skips and which it refuses or recomputes, what an interrupted step
leaves, what each stage is called with, and what study.json / run.json / steps.json record.

The stages are fakes that read what the runner hands them: the fake evaluation records which blocks of the
base model are in the model it is given (so a cell evaluated with the wrong layers skipped shows), the fake
scorer returns fixed removal orders, the fake recovery writes what the real one does (recover.json, merged/,
the teacher-response cache). The whole study on a real tiny model is tested in test_study.py.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.errors import UsageError
from prunescope.io import read_json, write_json
from prunescope.models import get_layers
from prunescope.study import Stages, run_study
from prunescope.study.config import from_mapping, StudyConfig
from prunescope.study.runner import StudyRun, _duration, _now, cell_name

LAYERS = 6
# Removal orders the fake scorer returns (least important first). 6 layers: ratio 0.2 removes round(1.2) = 1,
# ratio 0.5 removes 3. angular picks a contiguous block per count: k=1 -> [2], k=3 -> [2, 3, 4].
ORDERS = {"reverse": [5, 4, 3, 2, 1, 0], "block_influence": [2, 4, 0, 5, 1, 3], "sleb": [1, 3, 5, 0, 2, 4],
          "greedy_task": [0, 5, 1, 4, 2, 3]}
REMOVED = {("reverse", 0.2): [5], ("reverse", 0.5): [3, 4, 5], ("block_influence", 0.2): [2],
           ("block_influence", 0.5): [0, 2, 4], ("angular", 0.2): [2], ("angular", 0.5): [2, 3, 4]}


def angular_order(k: int) -> list[int]:
    block = list(range(2, 2 + k))
    return block + [i for i in range(LAYERS) if i not in block]


class Fake:
    """Stage functions that record their calls. ``fail``/``after``: the (after+1)-th call of that stage raises
    KeyboardInterrupt (what a Ctrl-C looks like to the code in between)."""

    def __init__(self, fail: str | None = None, after: int = 0, isolation: str | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail, self.after, self.isolation = fail, after, isolation
        self.index: dict[int, int] = {}
        self.base = self.tok = None
        self.generated = 0  # teacher-response sets the fake recovery had to generate

    def _count(self, stage: str, info: dict, *tokenizers) -> None:
        # every stage works with the study's tokenizer (the one loaded with the base model)
        assert all(t is self.tok for t in tokenizers), f"{stage} was not given the study's tokenizer"
        self.calls.append((stage, info))
        if stage == self.fail and len(self.of(stage)) > self.after:
            raise KeyboardInterrupt

    def of(self, stage: str) -> list[dict]:
        return [info for s, info in self.calls if s == stage]

    def stages(self) -> Stages:
        return Stages(load_model=self.load_model, score_layers=self.score_layers, evaluate=self.evaluate,
                      recover=self.recover, recover_config=self.recover_config,
                      measure_efficiency=self.measure_efficiency)

    def kept(self, model) -> list | None:
        """The base model's block indices present in ``model`` (None for a model that is not the base)."""
        ids = [self.index.get(id(b)) for b in get_layers(model)]
        return None if None in ids else ids

    def load_model(self, name, *, dtype=None, device=None):
        self._count("load_model", {"name": name, "dtype": dtype, "device": device})
        config = Path(name) / "config.json"
        if config.is_file():  # a recovered checkpoint: as many blocks as the fake recovery wrote
            model = make_tiny_model("llama", layers=read_json(config)["num_hidden_layers"], seed=1)
            model.train()
            return model, make_tokenizer()
        model = make_tiny_model("llama", layers=LAYERS)
        model.train()  # the runner must put it in eval mode
        self.index = {id(b): i for i, b in enumerate(get_layers(model))}
        self.base, self.tok = model, make_tokenizer()
        return model, self.tok

    def score_layers(self, model, tokenizer, criterion, *, num_layers=None, seed=None, **kwargs):
        self._count("score_layers", {"criterion": criterion, "num_layers": num_layers, "seed": seed,
                                     "kwargs": kwargs, "kept": self.kept(model)}, tokenizer)
        order = angular_order(num_layers) if criterion == "angular" else ORDERS[criterion]
        return {"model": "tiny", "criterion": criterion, "num_layers": LAYERS,
                "scores": [float(LAYERS - order.index(i)) for i in range(LAYERS)], "order": order, "config": {}}

    def evaluate(self, model, tokenizer, tasks, *, out, **kwargs):
        kept = self.kept(model)
        self._count("evaluate", {"tasks": list(tasks), "out": Path(out), "kwargs": kwargs, "kept": kept,
                                 "layers": len(get_layers(model)), "training": model.training,
                                 "base": model is self.base}, tokenizer)
        limit = kwargs["limit"]
        # item j is answered correctly exactly when base block j is in the model (all wrong for other models)
        rows, metrics = [], {"tasks": {}, "kept": kept}
        for t in tasks:
            correct = [int(kept is not None and j in kept) for j in range(limit)]
            rows += [{"task": t, "id": j, "correct": bool(c)} for j, c in enumerate(correct)]
            info = {"kind": "multiple_choice" if t.endswith("_mc") else "generative", "n": limit, "chance": 0.25,
                    "accuracy": sum(correct) / limit}
            if self.isolation:
                info["isolation"] = self.isolation
            metrics["tasks"][t] = info
        (Path(out).parent / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(out, metrics)
        return metrics

    def recover_config(self, *, method, **settings):
        self._count("recover_config", {"method": method, **settings})
        return SimpleNamespace(method=method, **settings)

    def recover(self, student, tokenizer, *, teacher, teacher_tokenizer, config, out, overwrite, resume, dtype):
        out = Path(out)
        base = self.base
        # the student's blocks, matched by weights to the base's blocks they were copied from
        q = [b.self_attn.q_proj.weight for b in get_layers(base)]
        copied = [next((i for i, w in enumerate(q) if torch.equal(w, b.self_attn.q_proj.weight)), None)
                  for b in get_layers(student)]
        self._count("recover", {"config": vars(config), "out": out, "overwrite": overwrite, "resume": resume,
                                "dtype": dtype, "teacher_is_base": teacher is base, "copied": copied,
                                "student_is_base": student is base,
                                "had_responses": (out / "self_generated.jsonl").is_file()},
                    tokenizer, teacher_tokenizer)
        # teacher responses only for self-generated data (data: dataset trains on the dataset's own answers)
        if getattr(config, "data", "self") == "self" and not (out / "self_generated.jsonl").is_file():
            self.generated += 1
            write_json(out / "self_generated.jsonl", {"responses": "teacher"})
        write_json(out / "recover.json", {"response_tokens": 100 + len(copied)})
        write_json(out / "merged" / "config.json", {"num_hidden_layers": len(get_layers(student))})
        write_json(out / "checkpoint" / "state.json", {})
        return {}

    def measure_efficiency(self, model, tokenizer, **kwargs):
        base = kwargs.pop("base", None)
        if isinstance(model, torch.nn.Module):
            kept = self.kept(model)
        else:  # a callable giving the cut model inside a with block, timed against ``base``
            with model() as cut:
                kept = self.kept(cut)
        self._count("measure_efficiency", {"kwargs": kwargs, "kept": kept, "base_is_model": base is self.base},
                    tokenizer)
        return {"kept": kept, "settings": kwargs}


RECOVERY = {"methods": ["lora"], "criteria": ["block_influence"], "ratios": [0.5],
            "settings": {"max_steps": 2, "lr": 1e-4}}


def make_config(tmp_path, **overrides) -> StudyConfig:
    settings = dict(
        name="tiny", model="tiny-model", dtype="float32", device="cpu", seed=3,
        tasks=["arith_add_1d_gen", "arith_add_1d_mc"], limit=2, criteria=["reverse", "block_influence", "angular"],
        ratios=[0.2, 0.5], scoring={"calib": ["calibration text"]},
        efficiency={"prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "warmup": 1},
        ablation={"enabled": True, "limit": 3, "tasks": ["arith_add_1d_mc"]},
        recovery=RECOVERY, out=str(tmp_path / "run"))
    settings.update(overrides)
    return from_mapping(StudyConfig, settings)


CELLS = [f"cells/{c}-r{r}" for c in ("reverse", "block_influence", "angular") for r in ("0.2", "0.5")]
KEYS = (["baseline", "scores/reverse.json", "scores/block_influence.json", "scores/angular-k1.json",
         "scores/angular-k3.json"] + CELLS + ["block_influence-r0.5/recovery-lora",
                                              "efficiency/base", "efficiency/k1", "efficiency/k3", "ablation/base"]
        + [f"ablation/layer-{i:03d}" for i in range(LAYERS)])  # 1 + 4 + 6 + 1 + 3 + 7 = 22


@pytest.fixture
def quiet_report(monkeypatch):
    """results.csv and the report are the report package's work (tested there): record the calls only."""
    import prunescope.report
    import prunescope.report.tables
    calls = []

    def build_report(run_dir):
        calls.append(("report", Path(run_dir)))
        return {"html": Path(run_dir) / "report.html"}

    def write_results_csv(run_dir):
        calls.append(("csv", Path(run_dir)))
        return Path(run_dir) / "results.csv"

    monkeypatch.setattr(prunescope.report, "build_report", build_report)
    monkeypatch.setattr(prunescope.report.tables, "write_results_csv", write_results_csv)
    return calls


@pytest.fixture(autouse=True)
def fast_io(monkeypatch):
    """Durability is io.py's concern (tested there): skip fsync, and read the library versions once. A run of
    22 steps then takes a fraction of a second, which keeps mutation testing of the runner affordable."""
    import functools

    import prunescope.pruning.save as save
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(save, "library_versions", functools.lru_cache(maxsize=1)(save.library_versions))


def snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


# ---- planning ----

def test_plan_has_every_step_in_order_with_its_dependencies(tmp_path):
    fake = Fake()
    run = StudyRun(make_config(tmp_path), fake.stages(), progress=False)
    steps = run.plan()
    assert [s.key for s in steps] == KEYS
    by = {s.key: s for s in steps}
    out = tmp_path / "run"
    from prunescope import __version__
    common = {"prunescope": __version__, "model": "tiny-model", "dtype": "float32", "seed": 3}
    evals = {"tasks": ["arith_add_1d_gen", "arith_add_1d_mc"], "limit": 2, "data": None}
    assert by["baseline"].inputs == {**common, **evals}
    assert by["baseline"].outputs == [out / "baseline/metrics.json", out / "baseline/samples.jsonl"]
    assert by["baseline"].label == "eval baseline"
    assert by["scores/reverse.json"].inputs == {**common, "criterion": "reverse", "num_layers": None,
                                                "scoring": {"calib": ["calibration text"]}}
    assert by["scores/angular-k3.json"].inputs["num_layers"] == 3
    assert by["scores/angular-k1.json"].outputs == [out / "scores/angular-k1.json"]
    assert [by[k].label for k in ("scores/reverse.json", "scores/angular-k1.json", "scores/angular-k3.json")] == [
        "score reverse", "score angular (removing 1)", "score angular (removing 3)"]
    # each cell reads the scores of its own criterion (angular: of its own count)
    for key, dep, removed in [("cells/reverse-r0.2", "scores/reverse.json", 1),
                              ("cells/block_influence-r0.5", "scores/block_influence.json", 3),
                              ("cells/angular-r0.2", "scores/angular-k1.json", 1),
                              ("cells/angular-r0.5", "scores/angular-k3.json", 3)]:
        crit, ratio = key[len("cells/"):].split("-r")
        assert by[key].inputs == {**common, **evals, "criterion": crit, "ratio": float(ratio), "removed": removed,
                                  "after": {dep: by[dep].identity}}
        assert by[key].outputs == [out / key / "metrics.json", out / key / "samples.jsonl",
                                   out / key / "prunescope.json"]
    assert by["cells/angular-r0.5"].label == "eval angular r=0.5 (3 of 6 layers)"
    rec = by["block_influence-r0.5/recovery-lora"]
    assert rec.label == "recover lora block_influence r=0.5"
    assert rec.inputs == {**common, **evals, "criterion": "block_influence", "ratio": 0.5, "method": "lora",
                          "recovery": {"max_steps": 2, "lr": 1e-4},
                          "after": {"scores/block_influence.json": by["scores/block_influence.json"].identity}}
    assert rec.outputs == [out / "cells/block_influence-r0.5/recovery-lora/metrics.json",
                           out / "cells/block_influence-r0.5/recovery-lora"]
    eff = {"enabled": True, "prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "warmup": 1, "batch_size": 1}
    assert by["efficiency/base"].inputs == {**common, "efficiency": eff}
    assert by["efficiency/base"].outputs == [out / "baseline/efficiency.json"]
    # cells that remove the same number of layers are timed once, on the first one's removal set
    k3 = by["efficiency/k3"]
    assert k3.label == "efficiency 3 of 6 layers removed"
    assert k3.inputs == {**common, "efficiency": eff,
                         "cells": ["reverse-r0.5", "block_influence-r0.5", "angular-r0.5"],
                         "after": {"efficiency/base": by["efficiency/base"].identity,
                                   "scores/reverse.json": by["scores/reverse.json"].identity}}
    assert k3.outputs == [out / "cells" / c / "efficiency.json" for c in ("reverse-r0.5", "block_influence-r0.5",
                                                                          "angular-r0.5")]
    abl = {**common, "data": None, "ablation": {"limit": 3, "tasks": ["arith_add_1d_mc"]}}
    assert by["ablation/base"].inputs == abl and by["ablation/base"].outputs == [out / "ablation/base.json"]
    assert by["ablation/layer-004"].inputs == {**abl, "layer": 4}
    assert by["ablation/layer-004"].outputs == [out / "ablation/layer-004.json"]
    assert (by["ablation/base"].label, by["ablation/layer-004"].label) == ("ablation base", "ablation layer 4")
    # the work of a step, for estimates: items it evaluates (2 tasks x limit 2; ablation 1 task x limit 3)
    assert {k: by[k].work for k in ("baseline", "cells/angular-r0.2", "scores/reverse.json", "ablation/base",
                                    "ablation/layer-000")} == {"baseline": 4, "cells/angular-r0.2": 4,
                                                               "scores/reverse.json": 0, "ablation/base": 3,
                                                               "ablation/layer-000": 3}
    assert [c["name"] for c in fake.of("load_model")] == ["tiny-model"]  # the layer count needs the model


def test_plan_without_efficiency_ablation_or_recovery(tmp_path):
    cfg = make_config(tmp_path, efficiency={"enabled": False}, ablation={"enabled": False}, recovery={},
                      criteria=["reverse"], ratios=[0.5], limit=None)
    steps = StudyRun(cfg, Fake().stages(), progress=False).plan()
    assert [s.key for s in steps] == ["baseline", "scores/reverse.json", "cells/reverse-r0.5"]
    assert steps[0].work == 2 * 200  # no limit: estimated as 200 items per task


def test_iterative_criteria_score_once_for_the_largest_count(tmp_path):
    cfg = make_config(tmp_path, criteria=["sleb", "greedy_task"], recovery={}, ablation={"enabled": False},
                      efficiency={"enabled": False})
    by = {s.key: s for s in StudyRun(cfg, Fake().stages(), progress=False).plan()}
    assert list(by) == ["baseline", "scores/sleb.json", "scores/greedy_task.json", "cells/sleb-r0.2",
                        "cells/sleb-r0.5", "cells/greedy_task-r0.2", "cells/greedy_task-r0.5"]
    assert by["scores/sleb.json"].label == "score sleb (removing 3)"
    assert by["scores/sleb.json"].inputs["num_layers"] == 3
    assert "tasks" not in by["scores/sleb.json"].inputs
    # greedy_task steers by the study's tasks when scoring names none: they are part of its identity
    assert by["scores/greedy_task.json"].inputs["tasks"] == ["arith_add_1d_gen", "arith_add_1d_mc"]
    for r in ("0.2", "0.5"):
        assert by[f"cells/sleb-r{r}"].inputs["after"] == {"scores/sleb.json": by["scores/sleb.json"].identity}
    cfg = make_config(tmp_path, criteria=["greedy_task"], recovery={}, scoring={"tasks": ["arith_add_1d_mc"]})
    step = next(s for s in StudyRun(cfg, Fake().stages(), progress=False).plan() if s.key.startswith("scores/"))
    assert "tasks" not in step.inputs and step.inputs["scoring"] == {"tasks": ["arith_add_1d_mc"]}


def test_recovery_losses_after_the_first_take_its_token_budget(tmp_path):
    rec = {**RECOVERY, "losses": ["sft", "kd"]}
    by = {s.key: s for s in StudyRun(make_config(tmp_path, recovery=rec), Fake().stages(), progress=False).plan()}
    sft, kd = by["block_influence-r0.5/recovery-lora-sft"], by["block_influence-r0.5/recovery-lora-kd"]
    scores = {"scores/block_influence.json": by["scores/block_influence.json"].identity}
    assert sft.inputs["loss"] == "sft" and sft.inputs["after"] == scores
    assert kd.inputs["loss"] == "kd" and kd.inputs["after"] == {**scores, sft.key: sft.identity}
    assert kd.label == "recover lora-kd block_influence r=0.5"
    # with a fixed token budget each loss trains on its own: no dependency
    rec = {**RECOVERY, "losses": ["sft", "kd"], "settings": {"token_budget": 500}}
    by = {s.key: s for s in StudyRun(make_config(tmp_path, recovery=rec), Fake().stages(), progress=False).plan()}
    assert by["block_influence-r0.5/recovery-lora-kd"].inputs["after"] == scores


@pytest.mark.parametrize("plan, derived", [
    ({"losses": ["sft", "kd"]}, True),
    ({"losses": ["sft", "kd"], "equal_tokens": False}, False),
    ({"losses": ["kd"]}, False),
    ({"losses": ["sft", "kd"], "settings": {"token_budget": 100}}, False),
    ({"losses": ["sft", "kd"], "settings": {"token_budget": 0}}, True),
])
def test_equal_tokens_derived(tmp_path, plan, derived):
    cfg = make_config(tmp_path, recovery={"methods": ["lora"], **plan})
    assert StudyRun(cfg, Fake().stages()).equal_tokens_derived() is derived


def test_method_cells_depend_on_baseline_efficiency_and_reused_scores(tmp_path):
    cfg = make_config(tmp_path, criteria=["block_influence"], ratios=[0.5], recovery={}, ablation={"enabled": False},
                      methods=[{"method": "depth", "settings": {"criterion": "block_influence"}},
                               {"method": "depth", "ratio": 0.25, "settings": {"criterion": "block_influence"}}])
    by = {s.key: s for s in StudyRun(cfg, Fake().stages(), progress=False).plan()}
    assert [k for k in by if k.startswith("cells/method-")] == ["cells/method-depth-r0.5", "cells/method-depth-r0.25"]
    reusing, own = by["cells/method-depth-r0.5"], by["cells/method-depth-r0.25"]
    base = {"baseline": by["baseline"].identity, "efficiency/base": by["efficiency/base"].identity}
    scores = by["scores/block_influence.json"]
    assert reusing.inputs["after"] == {**base, scores.key: scores.identity}
    assert own.inputs["after"] == base  # the study does not score 0.25: nothing to reuse
    assert reusing.inputs["scoring"] == {"calib": ["calibration text"]}
    assert reusing.inputs["method"]["method"] == "depth" and reusing.inputs["method"]["ratio"] == 0.5
    assert reusing.inputs["efficiency"]["prompt_tokens"] == 8 and reusing.inputs["limit"] == 2
    cell = tmp_path / "run" / "cells/method-depth-r0.5"
    assert reusing.outputs == [cell / "efficiency.json", cell / "metrics.json", cell / "samples.jsonl",
                               cell / "prunescope.json"]
    assert reusing.work == 4 and reusing.label == "compress and eval method-depth-r0.5"
    cfg = make_config(tmp_path, criteria=["block_influence"], ratios=[0.5], recovery={}, ablation={"enabled": False},
                      efficiency={"enabled": False},
                      methods=[{"method": "depth", "settings": {"criterion": "angular"}}])
    step = StudyRun(cfg, Fake().stages(), progress=False).plan()[-1]
    assert step.outputs[0].name == "metrics.json"  # no efficiency.json to wait for
    assert step.inputs["after"] == {"baseline": StudyRun(cfg, Fake().stages()).plan()[0].identity}


def test_two_method_entries_for_one_cell_are_refused(tmp_path):
    with pytest.raises(UsageError, match=r"^methods\[1\]: makes the same cell method-depth-r0.5 as methods\[0\]"):
        make_config(tmp_path, ratios=[0.5], methods=[{"method": "depth", "settings": {"criterion": "reverse"}},
                                                      {"method": "depth", "settings": {"criterion": "angular"}}])


def test_method_cell_is_evaluated_like_a_cell(tmp_path, monkeypatch, quiet_report):
    """The runner hands the method cell an evaluation that writes the cell's metrics against the baseline."""
    import prunescope.study.methods_axis as axis
    seen = []

    def fake_cell(runner, spec, cell, *, evaluate_fn):
        seen.append((spec["method"], cell))
        evaluate_fn(runner.model, cell)

    monkeypatch.setattr(axis, "run_method_cell", fake_cell)
    cfg = make_config(tmp_path, criteria=["reverse"], ratios=[0.5], recovery={}, ablation={"enabled": False},
                      efficiency={"enabled": False}, methods=["depth"])
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    out = tmp_path / "run"
    cell = out / "cells" / "method-depth-r0.5"
    assert seen == [("depth", cell)]
    ev = fake.of("evaluate")[-1]
    assert ev["out"].parent == cell / ".pending" and (cell / "metrics.json").is_file()
    assert ev["tasks"] == ["arith_add_1d_gen", "arith_add_1d_mc"]
    assert ev["kwargs"] == {"limit": 2, "seed": 3, "batch_size": "auto", "progress": False,
                            "baseline": str(out / "baseline/metrics.json")}


def test_too_large_a_ratio_for_the_model_is_one_line_naming_the_key(tmp_path):
    fake = Fake()
    run = StudyRun(make_config(tmp_path, ratios=[0.2, 0.95], recovery={}), fake.stages())
    with pytest.raises(UsageError) as e:
        run.plan()
    assert str(e.value) == "ratios 0.95 would remove all 6 layers; use a smaller ratio"
    assert run.removal_counts(20) == {0.2: 4, 0.95: 19}


def test_num_layers_comes_from_study_json_of_the_same_model(tmp_path):
    fake = Fake()
    run = StudyRun(make_config(tmp_path), fake.stages())
    out = tmp_path / "run"
    write_json(out / "study.json", {"num_layers": 4, "config": {"model": "tiny-model"}})
    assert run.num_layers() == 4 and fake.of("load_model") == []
    write_json(out / "study.json", {"num_layers": 4, "config": {"model": "another-model"}})
    assert run.num_layers() == LAYERS and len(fake.of("load_model")) == 1
    write_json(out / "study.json", {"num_layers": 0, "config": {"model": "tiny-model"}})
    assert run.num_layers() == LAYERS and len(fake.of("load_model")) == 1  # loaded once, kept
    write_json(out / "study.json", {"num_layers": 4})  # no config recorded: not trusted
    assert run.num_layers() == LAYERS


def test_model_is_loaded_once_in_eval_mode_with_the_config_precision(tmp_path):
    fake = Fake()
    run = StudyRun(make_config(tmp_path, dtype="bfloat16", device="cpu"), fake.stages())
    tok = run.tokenizer
    assert run.model is fake.base and not run.model.training and tok is fake.tok
    assert fake.of("load_model") == [{"name": "tiny-model", "dtype": "bfloat16", "device": "cpu"}]


def test_eval_and_score_arguments(tmp_path):
    cfg = make_config(tmp_path, data="/data/gsm8k", limit=5, batch_size=4,
                      tasks=["arith_add_1d_gen", "lmeval:hellaswag"], scoring={"num_layers": 9, "calib": ["c"]})
    fake = Fake()
    run = StudyRun(cfg, fake.stages(), progress=True)
    out = tmp_path / "run"
    assert run.eval_kwargs() == {"limit": 5, "seed": 3, "batch_size": 4, "progress": True, "data": "/data/gsm8k"}
    assert run.eval_kwargs(baseline=True, limit=7) == {"limit": 7, "seed": 3, "batch_size": 4, "progress": True,
                                                       "data": "/data/gsm8k",
                                                       "baseline": str(out / "baseline/metrics.json")}
    run.run_scores("greedy_task", 3, out / "scores/greedy_task.json")
    run.run_scores("reverse", None, out / "scores/reverse.json")
    greedy, reverse = fake.of("score_layers")
    # greedy_task steers by the study's own tasks, lm-eval tasks excepted (they have no calibration split)
    assert greedy == {"criterion": "greedy_task", "num_layers": 3, "seed": 3, "kept": list(range(6)),
                      "kwargs": {"calib": ["c"], "tasks": ["arith_add_1d_gen"], "progress": True}}
    # a criterion scored without a count ignores a num_layers in the scoring settings
    assert reverse == {"criterion": "reverse", "num_layers": None, "seed": 3, "kept": list(range(6)),
                       "kwargs": {"calib": ["c"], "progress": True}}
    assert read_json(out / "scores/reverse.json")["order"] == ORDERS["reverse"]
    assert run.removed_layers("reverse", 2) == [4, 5]
    assert run.scores_path("angular", 3) == out / "scores/angular-k3.json"
    cfg = make_config(tmp_path, scoring={"tasks": ["arith_add_1d_mc"], "progress": True})
    fake = Fake()
    StudyRun(cfg, fake.stages(), progress=False).run_scores("greedy_task", 2, out / "g.json")
    assert fake.of("score_layers")[0]["kwargs"] == {"tasks": ["arith_add_1d_mc"], "progress": True}


# ---- a whole run with the fake stages ----

def test_run_calls_each_stage_as_planned_and_records_it(tmp_path, quiet_report, monkeypatch):
    import prunescope.study.ablation as ablation_module
    real_summary, summary_calls = ablation_module.write_ablation_summary, []

    def summary_spy(folder, total, *, limit, seed):  # the real summary, with the arguments it was given kept
        summary_calls.append({"total": total, "limit": limit, "seed": seed})
        return real_summary(folder, total, limit=limit, seed=seed)

    monkeypatch.setattr(ablation_module, "write_ablation_summary", summary_spy)
    fake = Fake()
    out = run_study(make_config(tmp_path), stages=fake.stages(), progress=False)
    assert out == tmp_path / "run"
    base_metrics = str(out / "baseline/metrics.json")
    common = {"limit": 2, "seed": 3, "batch_size": "auto", "progress": False}
    # the base model once, the recovered checkpoint once (read before evaluating it)
    rdir = out / "cells/block_influence-r0.5/recovery-lora"
    assert fake.of("load_model") == [{"name": "tiny-model", "dtype": "float32", "device": "cpu"},
                                     {"name": str(rdir / "merged"), "dtype": "float32", "device": "cpu"}]
    scored = [(c["criterion"], c["num_layers"], c["seed"], c["kwargs"]) for c in fake.of("score_layers")]
    calib = {"calib": ["calibration text"], "progress": False}
    assert scored == [("reverse", None, 3, calib), ("block_influence", None, 3, calib), ("angular", 1, 3, calib),
                      ("angular", 3, 3, calib)]
    evals = fake.of("evaluate")
    all_layers = list(range(6))
    assert evals[0]["kept"] == all_layers and evals[0]["kwargs"] == common and evals[0]["base"]
    assert evals[0]["out"] == out / "baseline/.pending/metrics.json" and not evals[0]["training"]
    for ev, (crit, ratio) in zip(evals[1:7], [(c, r) for c in ("reverse", "block_influence", "angular")
                                              for r in (0.2, 0.5)]):
        assert ev["out"].parent.parent.name == f"{crit}-r{ratio}"
        assert ev["kept"] == [i for i in all_layers if i not in REMOVED[(crit, ratio)]], (crit, ratio)
        assert ev["kwargs"] == {**common, "baseline": base_metrics}
        meta = read_json(out / "cells" / f"{crit}-r{ratio}" / "prunescope.json")
        k = len(REMOVED[(crit, ratio)])
        assert meta["removed_layers"] == REMOVED[(crit, ratio)]
        assert (meta["base_model"], meta["criterion"], meta["ratio"]) == ("tiny-model", crit, ratio)
        assert (meta["num_layers_before"], meta["num_layers_after"]) == (6, 6 - k)
        assert meta["scores_file"] == ("scores/angular-k%d.json" % k if crit == "angular" else f"scores/{crit}.json")
        assert "torch" in meta["versions"]
        assert read_json(out / "cells" / f"{crit}-r{ratio}" / "metrics.json")["kept"] == ev["kept"]
    # after each cell the base model is whole again
    assert fake.kept(fake.base) == all_layers
    # the recovered model: 3 blocks, not the base
    rec_eval = evals[7]
    assert rec_eval["layers"] == 3 and not rec_eval["base"] and rec_eval["out"] == rdir / ".pending/metrics.json"
    assert rec_eval["kwargs"] == {**common, "baseline": base_metrics}
    # ablation: the ablation tasks at the ablation limit, every layer skipped alone
    ablation = evals[8:]
    assert len(ablation) == 7 and all(e["tasks"] == ["arith_add_1d_mc"] for e in ablation)
    assert all(e["kwargs"] == {**common, "limit": 3} for e in ablation)
    assert [e["kept"] for e in ablation] == [all_layers] + [[j for j in all_layers if j != i] for i in range(6)]
    assert ablation[1]["out"] == out / "ablation/layer-000.json.eval/.pending/metrics.json"
    assert len(evals) == 1 + 6 + 1 + 7
    # item j is right exactly when block j is present: skipping layer 0, 1 or 2 drops accuracy by 1/3
    summary = read_json(out / "ablation/ablation.json")
    assert summary["tasks"]["arith_add_1d_mc"]["drop"] == pytest.approx([1 / 3] * 3 + [0] * 3)
    assert (summary["limit"], summary["num_layers"]) == (3, 6)
    assert summary_calls == [{"total": 6, "limit": 3, "seed": 3}]
    base = read_json(out / "ablation/base.json")
    assert base["items"] == {"arith_add_1d_mc": {"ids": ["0", "1", "2"], "correct": [1, 1, 1]}}
    assert all(type(c) is int for c in base["items"]["arith_add_1d_mc"]["correct"])  # 0/1, not true/false
    assert base["tasks"]["arith_add_1d_mc"]["accuracy"] == 1.0
    layer1 = read_json(out / "ablation/layer-001.json")
    assert layer1["layer"] == 1 and layer1["items"]["arith_add_1d_mc"]["correct"] == [1, 0, 1]
    assert not list(out.rglob("*.eval")) and not list(out.rglob(".pending"))
    # efficiency: the base alone, then once per removed-layer count on the first cell with that count
    eff = fake.of("measure_efficiency")
    settings = {"prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "warmup": 1, "batch_size": 1, "seed": 3}
    assert [(e["kept"], e["kwargs"]) for e in eff] == [(all_layers, settings), ([0, 1, 2, 3, 4], settings),
                                                       ([0, 1, 2], settings)]
    assert [e["base_is_model"] for e in eff] == [False, True, True]
    assert read_json(out / "baseline/efficiency.json") == {"measured_on": "baseline", "kept": all_layers,
                                                           "settings": settings}
    for crit in ("reverse", "block_influence", "angular"):
        assert read_json(out / "cells" / f"{crit}-r0.2" / "efficiency.json") == {
            "measured_on": "reverse-r0.2", "kept": [0, 1, 2, 3, 4], "settings": settings}
        assert read_json(out / "cells" / f"{crit}-r0.5" / "efficiency.json")["measured_on"] == "reverse-r0.5"
    # the report is built once, from the folder
    assert quiet_report == [("csv", out), ("report", out)]


def test_recovery_trains_the_cut_and_evaluates_the_merged_model(tmp_path, quiet_report):
    fake = Fake()
    out = run_study(make_config(tmp_path), stages=fake.stages(), progress=False)
    (rec,) = fake.of("recover")
    rdir = out / "cells/block_influence-r0.5/recovery-lora"
    # block_influence at 0.5 removes [0, 2, 4]: the student is a copy of blocks 1, 3, 5 (not the base itself)
    assert rec["copied"] == [1, 3, 5] and not rec["student_is_base"] and rec["teacher_is_base"]
    assert rec["config"] == {"method": "lora", "max_steps": 2, "lr": 1e-4, "seed": 3}
    assert (rec["out"], rec["overwrite"], rec["resume"], rec["dtype"]) == (rdir, False, True, torch.float32)
    assert fake.kept(fake.base) == list(range(6))  # the base model itself is never cut
    assert (rdir / "metrics.json").is_file() and (rdir / "recover.json").is_file()
    for name in ("merged", "checkpoint", "student"):
        assert not (rdir / name).exists(), name  # removed once metrics.json exists (keep_merged is off)
    # the teacher's responses are kept once for the whole study, keyed by the settings that make them
    shared = list((out / "recovery-data").glob("*/self_generated.jsonl"))
    assert len(shared) == 1 and shared[0].read_text() == (rdir / "self_generated.jsonl").read_text()
    info = read_json(out / "study.json")
    assert info["seeds"] == {"study": 3, "evaluation": 3, "scoring": 3, "recovery": 3}


def test_recovery_keeps_merged_on_request_and_resumes_from_it(tmp_path, quiet_report):
    cfg = make_config(tmp_path, recovery={**RECOVERY, "keep_merged": True, "settings": {"max_steps": 2, "seed": 7}})
    run_study(cfg, stages=Fake().stages(), progress=False)
    out = tmp_path / "run"
    rdir = out / "cells/block_influence-r0.5/recovery-lora"
    assert (rdir / "merged" / "config.json").is_file() and (rdir / "checkpoint").is_dir()
    assert read_json(out / "study.json")["seeds"]["recovery"] == 7
    # killed after training, before the evaluation's metrics.json: the rerun evaluates, it does not train again
    (rdir / "metrics.json").unlink()
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert fake.of("recover") == [] and len(fake.of("evaluate")) == 1 and fake.of("evaluate")[0]["layers"] == 3
    # without recover.json the training runs again (same folder: resume=True continues its checkpoint)
    (rdir / "metrics.json").unlink()
    (rdir / "recover.json").unlink()
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert len(fake.of("recover")) == 1 and fake.of("recover")[0]["config"]["seed"] == 7


def test_losses_share_teacher_responses_and_later_losses_train_on_the_first_ones_tokens(tmp_path, quiet_report):
    rec = {"methods": ["lora"], "losses": ["sft", "kd"], "criteria": ["block_influence"],
           "settings": {"max_steps": 2}}
    fake = Fake()
    run_study(make_config(tmp_path, recovery=rec, ablation={"enabled": False}), stages=fake.stages(), progress=False)
    configs = [r["config"] for r in fake.of("recover")]
    # cells block_influence r0.2 (removes [2]) and r0.5 (removes [0, 2, 4]), losses sft then kd in each
    assert [r["copied"] for r in fake.of("recover")] == [[0, 1, 3, 4, 5]] * 2 + [[1, 3, 5]] * 2
    assert configs[0] == {"method": "lora", "max_steps": 2, "seed": 3, "loss": "sft"}
    # kd trains on exactly the response tokens sft trained on (the fake writes 100 + student layers)
    assert configs[1] == {"method": "lora", "max_steps": None, "seed": 3, "loss": "kd", "token_budget": 105}
    assert configs[3] == {"method": "lora", "max_steps": None, "seed": 3, "loss": "kd", "token_budget": 103}
    # the teacher answered once; every other run found the responses in its folder
    assert fake.generated == 1
    assert [r["had_responses"] for r in fake.of("recover")] == [False, True, True, True]
    assert len(list((tmp_path / "run" / "recovery-data").iterdir())) == 1


def test_changed_response_settings_generate_new_responses(tmp_path, quiet_report):
    base = {"methods": ["lora"], "criteria": ["block_influence"], "ratios": [0.5]}
    cfg = make_config(tmp_path, recovery={**base, "settings": {"num_prompts": 4}}, ablation={"enabled": False})
    run_study(cfg, stages=Fake().stages(), progress=False)
    cfg = make_config(tmp_path, recovery={**base, "settings": {"num_prompts": 8}}, ablation={"enabled": False})
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False, force=True)
    assert fake.generated == 1 and len(list((tmp_path / "run" / "recovery-data").iterdir())) == 2


def test_qlora_student_is_the_saved_cut_loaded_in_4bit(tmp_path, quiet_report, monkeypatch):
    import prunescope.recovery.loading as loading
    from transformers import AutoModelForCausalLM
    loaded = []

    def load_4bit(path):
        loaded.append(path)
        return AutoModelForCausalLM.from_pretrained(path), None

    monkeypatch.setattr(loading, "load_4bit", load_4bit)
    rec = {**RECOVERY, "settings": {"max_steps": 2, "qlora": True}}
    fake = Fake()
    cfg = make_config(tmp_path, recovery=rec, ablation={"enabled": False})
    out = run_study(cfg, stages=fake.stages(), progress=False)
    rdir = out / "cells/block_influence-r0.5/recovery-lora"
    assert loaded == [str(rdir / "student")]
    assert fake.of("recover")[0]["copied"] == [1, 3, 5]  # the saved cut: blocks 1, 3, 5 of the base
    assert not (rdir / "student").exists()
    cfg = make_config(tmp_path / "kept", recovery={**rec, "keep_merged": True}, ablation={"enabled": False})
    rdir = run_study(cfg, stages=Fake().stages(), progress=False) / "cells/block_influence-r0.5/recovery-lora"
    meta = read_json(rdir / "student" / "prunescope.json")
    assert (meta["removed_layers"], meta["num_layers_before"], meta["criterion"]) == ([0, 2, 4], 6, "block_influence")
    # a saved student is loaded again, not saved again, when the training is redone
    before = (rdir / "student" / "config.json").stat().st_mtime_ns
    (rdir / "metrics.json").unlink()
    (rdir / "recover.json").unlink()
    run_study(cfg, stages=Fake().stages(), progress=False)
    assert (rdir / "student" / "config.json").stat().st_mtime_ns == before and len(loaded) == 3


def test_save_checkpoints_writes_the_cut_model(tmp_path, quiet_report):
    cfg = make_config(tmp_path, save_checkpoints=True, criteria=["reverse"], ratios=[0.5], recovery={},
                      ablation={"enabled": False}, efficiency={"enabled": False})
    fake = Fake()
    ckpt = tmp_path / "run/cells/reverse-r0.5/model"
    (ckpt / "partial").mkdir(parents=True)  # a folder left without its config.json is written over
    out = run_study(cfg, stages=fake.stages(), progress=False)
    assert not (ckpt / "partial").exists()
    assert read_json(ckpt / "config.json")["num_hidden_layers"] == 3
    assert read_json(ckpt / "tokenizer_config.json")  # the study's tokenizer saved beside the weights
    meta = read_json(ckpt / "prunescope.json")
    assert meta["removed_layers"] == [3, 4, 5] and meta["base_model"] == "tiny-model"
    assert meta["criterion"] == "reverse" and meta["num_layers_before"] == 6
    from safetensors.torch import load_file
    weights = load_file(str(ckpt / "model.safetensors"))
    for j, i in enumerate([0, 1, 2]):  # the kept blocks, in order
        assert torch.equal(weights[f"model.layers.{j}.self_attn.q_proj.weight"],
                           get_layers(fake.base)[i].self_attn.q_proj.weight)
    # an existing checkpoint is not written again when the cell is recomputed
    before = (ckpt / "config.json").stat().st_mtime_ns
    (out / "cells/reverse-r0.5/metrics.json").unlink()
    run_study(cfg, stages=Fake().stages(), progress=False)
    assert (ckpt / "config.json").stat().st_mtime_ns == before


def test_provenance_and_trail(tmp_path, quiet_report, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/__main__.py", "study", "--config", "tiny.yaml"])
    fake = Fake(isolation="bubblewrap")
    cfg = make_config(tmp_path, ablation={"enabled": False}, recovery={}, criteria=["reverse"])
    out = run_study(cfg, stages=fake.stages(), progress=False)
    info = read_json(out / "study.json")
    assert info["name"] == "tiny" and info["num_layers"] == 6 and info["config"] == cfg.to_dict()
    assert info["seeds"] == {"study": 3, "evaluation": 3, "scoring": 3, "recovery": 3}
    import platform
    assert info["versions"]["python"] == platform.python_version() and "torch" in info["versions"]
    assert info["host"] == {"platform": platform.platform(), "device": "cpu", "cuda": None,
                            "cpu_threads": torch.get_num_threads()}
    assert info["isolation"] == "bubblewrap"
    assert info["started"] <= info["finished"] and info["seconds"] >= 0
    assert "resumed" not in info
    trail = read_json(out / "run.json")
    assert trail["command"] == ["prunescope", "study", "--config", "tiny.yaml"]
    keys = ["baseline", "scores/reverse.json", "cells/reverse-r0.2", "cells/reverse-r0.5", "efficiency/base",
            "efficiency/k1", "efficiency/k3"]
    assert list(trail["steps"]) == keys
    assert trail["steps"]["baseline"]["label"] == "eval baseline" and trail["steps"]["baseline"]["work"] == 4
    assert trail["steps"]["efficiency/k3"]["work"] == 0 and trail["steps"]["efficiency/k3"]["seconds"] >= 0
    assert all(s["finished"] and 0 <= s["seconds"] < 60 for s in trail["steps"].values())
    assert trail["isolation"] == {"arith_add_1d_gen": "bubblewrap", "arith_add_1d_mc": "bubblewrap"}
    assert (trail["config"], trail["versions"], trail["host"]) == (info["config"], info["versions"], info["host"])
    assert (trail["started"], trail["finished"], trail["seconds"]) == (info["started"], info["finished"],
                                                                       info["seconds"])
    assert trail["log"] == "study.log" and trail["resumed"] == []
    manifest = read_json(out / "steps.json")
    assert list(manifest) == keys
    assert manifest["cells/reverse-r0.5"]["inputs"]["removed"] == 3
    # another program name is kept
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/prunescope-study", "--fast"])
    run_study(cfg, stages=Fake().stages(), progress=False)
    trail = read_json(out / "run.json")
    assert trail["command"] == ["prunescope-study", "--fast"] and list(trail["steps"]) == keys


def test_no_isolation_recorded_for_tasks_that_run_no_code(tmp_path, quiet_report):
    cfg = make_config(tmp_path, ablation={"enabled": False}, recovery={}, criteria=["reverse"],
                      efficiency={"enabled": False})
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    assert "isolation" not in read_json(out / "study.json") and read_json(out / "run.json")["isolation"] is None


def test_log_file_gets_every_step_and_the_logger_is_restored(tmp_path, quiet_report):
    log = logging.getLogger("prunescope.study")
    handlers, level = list(log.handlers), log.level
    log.setLevel(logging.WARNING)
    try:
        cfg = make_config(tmp_path, ablation={"enabled": False}, recovery={}, criteria=["reverse"],
                          efficiency={"enabled": False})
        out = run_study(cfg, stages=Fake().stages(), progress=False)
        assert log.level == logging.WARNING and log.handlers == handlers
    finally:
        log.setLevel(level)
    lines = (out / "study.log").read_text().splitlines()
    assert any(line.endswith("INFO plan: 3 eval, 1 scores") for line in lines), lines
    import re
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) ", line) for line in lines), lines
    # elapsed time in seconds (under a minute here), not a clock reading
    assert any(re.search(r" INFO \[1/4\] eval baseline  \(3 left after this, \d+s elapsed", line) for line in lines)
    assert any(" INFO [4/4] eval reverse r=0.5 (3 of 6 layers)  (0 left after this" in line for line in lines)
    assert any(re.search(r" INFO study finished in \d+s: ", line) and line.endswith(str(out / "report.html"))
               for line in lines)


# ---- resume ----

def test_rerun_of_a_finished_study_recomputes_nothing(tmp_path, quiet_report):
    cfg = make_config(tmp_path)
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    before, info = snapshot(out), read_json(out / "study.json")
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert fake.calls == []  # not even the model is loaded
    after = snapshot(out)
    for rel in before:
        if rel not in ("study.json", "run.json", "study.log"):
            assert after[rel] == before[rel], rel  # ablation.json included: not summarised again
    again = read_json(out / "study.json")
    assert again == info  # finished, seconds and no 'resumed' entry: nothing ran
    assert quiet_report[-2:] == [("csv", out), ("report", out)]


def test_interrupted_study_resumes_with_exactly_the_unfinished_steps(tmp_path, quiet_report):
    cfg = make_config(tmp_path)
    out = tmp_path / "run"
    # the 4th evaluation (baseline and two cells done) is interrupted
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, stages=Fake(fail="evaluate", after=3).stages(), progress=False)
    assert sorted(p.parent.name for p in out.glob("cells/*/metrics.json")) == ["reverse-r0.2", "reverse-r0.5"]
    cell = out / "cells/block_influence-r0.2"
    assert not (cell / "metrics.json").exists() and not (cell / "samples.jsonl").exists()
    # the interrupted step is recorded under its identity before it ran: its leftovers are its own
    assert "cells/block_influence-r0.2" in read_json(out / "steps.json")
    first = read_json(out / "study.json")
    assert "finished" not in first and first["seconds"] >= 0
    assert list(read_json(out / "run.json")["steps"]) == KEYS[:7]
    assert quiet_report == []  # no results.csv from a half study
    done = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/metrics.json")}

    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert fake.of("score_layers") == []  # scores are read from scores/*.json
    cells = [e["out"].parent.parent.name for e in fake.of("evaluate")[:4]]
    assert cells == ["block_influence-r0.2", "block_influence-r0.5", "angular-r0.2", "angular-r0.5"]
    assert len(fake.of("evaluate")) == 4 + 1 + 7  # the cells left, the recovered model, the ablation
    info = read_json(out / "study.json")
    assert info["started"] == first["started"] and len(info["resumed"]) == 1 and info["finished"]
    assert info["seconds"] >= first["seconds"]
    trail = read_json(out / "run.json")
    assert list(trail["steps"]) == KEYS and trail["resumed"] == info["resumed"]
    log = (out / "study.log").read_text()
    assert re.search(rf" INFO resuming {re.escape(str(out))}: 7 of 22 steps already finished$", log, re.M)
    # the plan of what is left, estimated from the 7 steps the interrupted attempt measured
    assert "plan: 4 eval, 1 recovery, 3 efficiency, 7 ablation; about " in log
    assert "from 7 step(s) measured here before" in log
    assert "[8/22] eval block_influence r=0.2 (1 of 6 layers)  (14 left after this" in log


def test_a_step_made_without_a_record_is_recomputed_from_scratch(tmp_path, quiet_report):
    cfg = make_config(tmp_path, ablation={"enabled": False}, recovery={}, criteria=["reverse"],
                      efficiency={"enabled": False})
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    (out / "steps.json").unlink()
    (out / "cells/reverse-r0.5/samples.jsonl").write_text("left by an older version\n")
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)  # no refusal: there is no record to contradict
    assert len(fake.of("evaluate")) == 3 and len(fake.of("score_layers")) == 1
    assert "older version" not in (out / "cells/reverse-r0.5/samples.jsonl").read_text()
    assert "recomputing eval baseline: no identity recorded changed" in (out / "study.log").read_text()
    assert len(read_json(out / "study.json")["resumed"]) == 1


def test_changed_setting_is_refused_in_one_line_then_recomputed_with_force(tmp_path, quiet_report):
    out = run_study(make_config(tmp_path), stages=Fake().stages(), progress=False)
    changed = make_config(tmp_path, limit=3)
    with pytest.raises(UsageError) as e:
        run_study(changed, stages=Fake().stages(), progress=False)
    assert str(e.value) == (
        f"{out} holds results made with a different limit: 8 finished step(s) would change (eval baseline, "
        "eval reverse r=0.2 (1 of 6 layers), eval reverse r=0.5 (3 of 6 layers), eval block_influence r=0.2 (1 of 6 "
        "layers), ...); pass --force to recompute them "
        "and the steps that depend on them, --overwrite to start over, or --out to use another folder")
    with pytest.raises(UsageError, match="different limit"):
        StudyRun(changed, Fake().stages(), progress=False).run()  # not forced unless asked
    fake = Fake()
    run_study(changed, stages=fake.stages(), progress=False, force=True)
    assert fake.of("score_layers") == [] and fake.of("measure_efficiency") == []
    evals = fake.of("evaluate")
    assert len(evals) == 8 and all(e["kwargs"]["limit"] == 3 for e in evals)
    assert len(read_json(out / "baseline/metrics.json")["kept"]) == 6
    assert (out / "baseline/samples.jsonl").read_text().count("\n") == 2 * 3
    assert re.search(r" INFO recomputing eval baseline: limit changed$", (out / "study.log").read_text(), re.M)


def test_refusal_names_up_to_four_steps_and_the_keys_not_the_dependencies(tmp_path, quiet_report):
    out = run_study(make_config(tmp_path), stages=Fake().stages(), progress=False)
    rec = {**RECOVERY, "settings": {"max_steps": 2, "lr": 2e-4}}
    with pytest.raises(UsageError, match=r"different recovery\.lr: 1 finished step\(s\) would change "
                                         r"\(recover lora block_influence r=0\.5\); pass --force"):
        run_study(make_config(tmp_path, recovery=rec), stages=Fake().stages(), progress=False)
    cfg = make_config(tmp_path, ablation={"enabled": True, "limit": 4, "tasks": ["arith_add_1d_mc"]})
    with pytest.raises(UsageError, match=r"different ablation\.limit: 7 finished step\(s\) would change \(ablation "
                                         r"base, ablation layer 0, ablation layer 1, ablation layer 2, \.\.\.\)"):
        run_study(cfg, stages=Fake().stages(), progress=False)
    # one scores file gone: its step is not finished, so not stale; the other three are, with the 6 cells, the
    # recovered cell and the two efficiency steps (whose removal set comes from scores/reverse.json)
    (out / "scores/reverse.json").unlink()
    with pytest.raises(UsageError, match=r"different scoring\.calib: 12 finished step\(s\) would change \(score "
                                         r"block_influence, score angular \(removing 1\), score angular "
                                         r"\(removing 3\), "
                                         r"eval reverse r=0\.2 \(1 of 6 layers\), \.\.\.\)"):
        run_study(make_config(tmp_path, scoring={"calib": ["other"]}), stages=Fake().stages(), progress=False)
    # no scores left: the steps are stale only through their dependencies, which are not keys
    for p in (out / "scores").glob("*.json"):
        p.unlink()
    with pytest.raises(UsageError, match=r"different configuration: 9 finished step\(s\) would change \(eval "
                                         r"reverse r=0\.2 \(1 of 6 layers\), eval reverse r=0\.5 \(3 of 6 layers\), "
                                         r"eval block_influence r=0\.2 \(1 of 6 layers\), eval block_influence r=0\.5 "
                                         r"\(3 of 6 layers\), \.\.\.\)"):
        run_study(make_config(tmp_path, scoring={"calib": ["other"]}), stages=Fake().stages(), progress=False)
    # exactly four: listed without an ellipsis
    cfg = make_config(tmp_path, efficiency={"prompt_tokens": 8, "new_tokens": 4, "repeats": 3, "warmup": 1})
    with pytest.raises(UsageError) as e:
        run_study(cfg, stages=Fake().stages(), progress=False)
    assert ("efficiency.repeats: 3 finished step(s) would change (efficiency base, efficiency 1 of 6 layers "
            "removed, efficiency 3 of 6 layers removed);") in str(e.value)


def test_ablation_summary_is_rewritten_when_a_layer_ran_or_it_is_missing(tmp_path, quiet_report):
    cfg = make_config(tmp_path, recovery={}, efficiency={"enabled": False}, criteria=["reverse"])
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    summary = out / "ablation/ablation.json"
    summary.unlink()
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert summary.is_file() and fake.of("evaluate") == []
    (out / "ablation/layer-001.json").unlink()
    write_json(summary, {"stale": True})
    run_study(cfg, stages=Fake().stages(), progress=False)
    assert read_json(summary)["tasks"]["arith_add_1d_mc"]["drop"] == pytest.approx([1 / 3] * 3 + [0] * 3)


def test_finished_time_is_set_again_only_when_a_step_ran(tmp_path, quiet_report):
    cfg = make_config(tmp_path, recovery={}, ablation={"enabled": False}, efficiency={"enabled": False},
                      criteria=["reverse"])
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    info = read_json(out / "study.json")
    info["finished"] = "2000-01-01T00:00:00+00:00"
    info["seconds"] = 1234.5
    write_json(out / "study.json", info)
    run_study(cfg, stages=Fake().stages(), progress=False)
    assert read_json(out / "study.json")["finished"] == "2000-01-01T00:00:00+00:00"
    (out / "cells/reverse-r0.5/metrics.json").unlink()
    run_study(cfg, stages=Fake().stages(), progress=False)
    again = read_json(out / "study.json")
    assert again["finished"] > "2000" and again["finished"] != "2000-01-01T00:00:00+00:00"
    assert 1234.5 <= again["seconds"] < 1234.5 + 60  # earlier attempts' compute plus this one's
    assert len(again["resumed"]) == 1
    # a resumed attempt that is interrupted leaves the study unfinished
    (out / "cells/reverse-r0.5/metrics.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, stages=Fake(fail="evaluate").stages(), progress=False)
    again = read_json(out / "study.json")
    assert again["finished"] is None and len(again["resumed"]) == 2
    run_study(cfg, stages=Fake().stages(), progress=False)
    again = read_json(out / "study.json")
    # a study.json without 'finished' (killed) gets one even when nothing is left to run
    del again["finished"]
    write_json(out / "study.json", again)
    run_study(cfg, stages=Fake().stages(), progress=False)
    assert read_json(out / "study.json")["finished"]


# ---- small helpers ----

def test_names_and_durations():
    assert cell_name("block_influence", 0.2) == "block_influence-r0.2"
    assert cell_name("reverse", 0.125) == "reverse-r0.125"
    assert cell_name("reverse", 0.50) == "reverse-r0.5"
    assert [_duration(s) for s in (0, 59.9, 60, 125.7, 3600)] == ["0s", "59s", "1m00s", "2m05s", "60m00s"]
    import datetime as dt
    stamp = dt.datetime.fromisoformat(_now())
    assert stamp.tzinfo is not None and stamp.microsecond == 0
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 5


@pytest.mark.parametrize("program, shown", [("__main__.py", "prunescope"), ("-m", "prunescope"), ("-c", "prunescope"),
                                            ("", "prunescope"), ("/opt/bin/study-tool", "study-tool")])
def test_trail_names_the_program(tmp_path, monkeypatch, program, shown):
    monkeypatch.setattr(sys, "argv", [program, "--out", "x"])
    run = StudyRun(make_config(tmp_path), Fake().stages())
    info = {"config": {"name": "tiny"}, "versions": {"v": 1}, "host": {"h": 2}, "started": "then", "seconds": 5.0}
    trail = run._trail(info)
    assert trail == {"command": [shown, "--out", "x"], "config": {"name": "tiny"}, "versions": {"v": 1},
                     "host": {"h": 2}, "started": "then", "resumed": [], "finished": None, "seconds": 5.0,
                     "isolation": None, "log": "study.log", "steps": {}}
    assert read_json(tmp_path / "run/run.json") == trail
    write_json(tmp_path / "run/run.json", {**trail, "isolation": {"t": "bwrap"}, "steps": {"baseline": {"seconds": 1}}})
    again = run._trail({**info, "resumed": ["earlier"]})
    assert (again["isolation"], again["steps"], again["resumed"]) == ({"t": "bwrap"}, {"baseline": {"seconds": 1}},
                                                                      ["earlier"])


def test_efficiency_is_measured_again_when_one_cell_lost_its_file(tmp_path, quiet_report):
    cfg = make_config(tmp_path, recovery={}, ablation={"enabled": False})
    out = run_study(cfg, stages=Fake().stages(), progress=False)
    (out / "cells/angular-r0.5/efficiency.json").unlink()  # not the first cell of its count
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert [e["kept"] for e in fake.of("measure_efficiency")] == [[0, 1, 2]]  # k=3, on reverse-r0.5's cut
    assert read_json(out / "cells/angular-r0.5/efficiency.json")["measured_on"] == "reverse-r0.5"
    assert fake.of("evaluate") == []


def test_ablation_tasks_default_to_the_study_tasks(tmp_path):
    cfg = make_config(tmp_path, ablation={"enabled": True, "limit": 3}, recovery={}, efficiency={"enabled": False},
                      criteria=["reverse"])
    run = StudyRun(cfg, Fake().stages())
    assert run.ablation_tasks() == ["arith_add_1d_gen", "arith_add_1d_mc"]
    by = {s.key: s for s in run.plan()}
    assert by["ablation/base"].inputs["ablation"] == {"limit": 3, "tasks": ["arith_add_1d_gen", "arith_add_1d_mc"]}
    assert by["ablation/layer-005"].work == 2 * 3


def test_training_only_settings_reuse_the_teacher_responses(tmp_path, quiet_report):
    """Responses depend on the teacher and the prompt settings, not on how the student trains on them."""
    base = {"methods": ["lora"], "criteria": ["block_influence"], "ratios": [0.5]}
    small = dict(ablation={"enabled": False}, efficiency={"enabled": False}, criteria=["block_influence"],
                 ratios=[0.5])
    run_study(make_config(tmp_path, recovery={**base, "settings": {"num_prompts": 4}}, **small),
              stages=Fake().stages(), progress=False)
    # every setting that only changes how the student trains, changed at once: the same responses serve
    training = {"loss": "kd", "kd_topk": 8, "kd_temperature": 2.0, "kd_weight": 0.5, "onpolicy_lambda": 0.5,
                "onpolicy_beta": 0.5, "onpolicy_temperature": 0.7, "onpolicy_max_new_tokens": 16,
                "token_budget": 1000, "max_steps": 3}
    fake = Fake()
    cfg = make_config(tmp_path, recovery={**base, "settings": {"num_prompts": 4, **training}}, **small)
    run_study(cfg, stages=fake.stages(), progress=False, force=True)
    assert fake.generated == 0 and fake.of("recover")[0]["had_responses"]
    assert len(list((tmp_path / "run" / "recovery-data").iterdir())) == 1


def test_responses_are_copied_into_a_recovery_folder_that_exists(tmp_path, quiet_report):
    rec = {"methods": ["lora"], "criteria": ["block_influence"], "settings": {"max_steps": 2}}
    cfg = make_config(tmp_path, recovery=rec, ablation={"enabled": False}, efficiency={"enabled": False},
                      criteria=["block_influence"])
    with pytest.raises(KeyboardInterrupt):  # the second cell's training is interrupted
        run_study(cfg, stages=Fake(fail="recover", after=1).stages(), progress=False)
    rdir = tmp_path / "run/cells/block_influence-r0.5/recovery-lora"
    (rdir / "self_generated.jsonl").unlink()  # killed before the copy finished
    assert rdir.is_dir()
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert fake.generated == 0 and [r["had_responses"] for r in fake.of("recover")] == [True]
    info = read_json(tmp_path / "run/study.json")
    assert info["finished"] and len(info["resumed"]) == 1


def test_recovery_on_dataset_answers_caches_no_teacher_responses(tmp_path, quiet_report):
    rec = {**RECOVERY, "settings": {"max_steps": 2, "data": "dataset", "prompts": "arith_add_1d_gen"}}
    fake = Fake()
    out = run_study(make_config(tmp_path, recovery=rec, ablation={"enabled": False}), stages=fake.stages(),
                    progress=False)
    assert fake.generated == 0 and len(fake.of("recover")) == 1
    assert not (out / "recovery-data").exists()
    assert (out / "cells/block_influence-r0.5/recovery-lora/metrics.json").is_file()


def test_progress_bars_only_on_a_terminal(tmp_path, monkeypatch, quiet_report):
    cfg = make_config(tmp_path, recovery={}, ablation={"enabled": False}, efficiency={"enabled": False},
                      criteria=["reverse"], ratios=[0.5])
    assert StudyRun(cfg, Fake().stages()).progress is False  # pytest's stderr is not a terminal
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: True, write=lambda text: None,
                                                       flush=lambda: None))
    assert StudyRun(cfg, Fake().stages()).progress is True
    assert StudyRun(cfg, Fake().stages(), progress=False).progress is False
    fake = Fake()
    run_study(cfg, stages=fake.stages(), progress=False)
    assert {e["kwargs"]["progress"] for e in fake.of("evaluate")} == {False}
    assert fake.of("score_layers")[0]["kwargs"]["progress"] is False


def test_refusal_lists_every_changed_key_and_at_most_four_steps(tmp_path, quiet_report):
    small = dict(recovery={}, ablation={"enabled": False}, efficiency={"enabled": False}, criteria=["reverse"],
                 ratios=[0.2, 0.5, 0.7])  # 6 layers: 1, 3 and 4 removed
    out = run_study(make_config(tmp_path, **small), stages=Fake().stages(), progress=False)
    # baseline and three cells: exactly four, all listed, no ellipsis
    with pytest.raises(UsageError) as e:
        run_study(make_config(tmp_path, **small, limit=3), stages=Fake().stages(), progress=False)
    assert ("different limit: 4 finished step(s) would change (eval baseline, eval reverse r=0.2 (1 of 6 layers), "
            "eval reverse r=0.5 (3 of 6 layers), eval reverse r=0.7 (4 of 6 layers)); pass --force") in str(e.value)
    # two keys changed: both named; five steps: four listed and an ellipsis
    two = dict(small, criteria=["reverse", "block_influence"], ratios=[0.2, 0.5])
    run_study(make_config(tmp_path / "b", **two), stages=Fake().stages(), progress=False)
    changed = make_config(tmp_path / "b", **two, limit=3, tasks=["arith_add_1d_mc"])
    with pytest.raises(UsageError) as e:
        run_study(changed, stages=Fake().stages(), progress=False)
    assert ("different limit, tasks: 5 finished step(s) would change (eval baseline, eval reverse r=0.2 (1 of 6 "
            "layers), eval reverse r=0.5 (3 of 6 layers), eval block_influence r=0.2 (1 of 6 layers), ...); "
            ) in str(e.value)
    run_study(changed, stages=Fake().stages(), progress=False, force=True)
    log = (tmp_path / "b/run/study.log").read_text()
    assert re.search(r" INFO recomputing eval baseline: limit, tasks changed$", log, re.M)


class Clock:
    """time.time() for the runner: it moves only when a stage works (evaluate 1.23456 s, the report 0.3 s)."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_seconds_are_the_compute_of_each_step_and_of_all_attempts(tmp_path, monkeypatch, quiet_report):
    import prunescope.report.tables
    import prunescope.study.runner as runner_module
    clock = Clock()
    monkeypatch.setattr(runner_module, "time", clock)
    csv = prunescope.report.tables.write_results_csv

    def slow_csv(run_dir):
        clock.now += 0.3
        return csv(run_dir)

    monkeypatch.setattr(prunescope.report.tables, "write_results_csv", slow_csv)

    class Timed(Fake):
        def evaluate(self, *args, **kwargs):
            clock.now += 1.23456
            return super().evaluate(*args, **kwargs)

    cfg = make_config(tmp_path, recovery={}, ablation={"enabled": False}, efficiency={"enabled": False},
                      criteria=["reverse"], ratios=[0.5])
    # an attempt killed in the cell's evaluation has recorded the compute up to its last finished step
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, stages=Timed(fail="evaluate", after=1).stages(), progress=False)
    out = tmp_path / "run"
    assert read_json(out / "study.json")["seconds"] == 1.2
    shutil.rmtree(out)
    out = run_study(cfg, stages=Timed().stages(), progress=False)
    steps = read_json(out / "run.json")["steps"]
    assert {k: v["seconds"] for k, v in steps.items()} == {"baseline": 1.2, "scores/reverse.json": 0.0,
                                                          "cells/reverse-r0.5": 1.2}
    # two evaluations and the report: 2.76912 s
    assert read_json(out / "study.json")["seconds"] == 2.8 and read_json(out / "run.json")["seconds"] == 2.8
    (out / "cells/reverse-r0.5/metrics.json").unlink()
    run_study(cfg, stages=Timed().stages(), progress=False)
    # the first attempt's 2.8 s plus this one's evaluation and report (1.53456 s)
    assert read_json(out / "study.json")["seconds"] == 4.3
    assert read_json(out / "run.json")["steps"]["cells/reverse-r0.5"]["seconds"] == 1.2
    assert re.search(r" INFO study finished in 1s: ", (out / "study.log").read_text())


def test_a_scores_file_too_short_for_the_count_is_named_in_the_error(tmp_path):
    run = StudyRun(make_config(tmp_path), Fake().stages())
    path = tmp_path / "run/scores/reverse.json"
    write_json(path, {"model": "tiny", "criterion": "reverse", "num_layers": 6, "scores": [0.0] * 6, "order": [5]})
    with pytest.raises(UsageError) as e:
        run.removed_layers("reverse", 2)
    assert str(e.value) == f"{path} 2: the scores only give an order for 1 layers"


def test_a_recovered_angular_cell_depends_on_the_scores_of_its_own_count(tmp_path):
    rec = {"methods": ["lora"], "criteria": ["angular"], "ratios": [0.5], "settings": {"max_steps": 2}}
    by = {s.key: s for s in StudyRun(make_config(tmp_path, recovery=rec), Fake().stages(), progress=False).plan()}
    k3 = by["scores/angular-k3.json"]
    assert by["angular-r0.5/recovery-lora"].inputs["after"] == {k3.key: k3.identity}


def test_efficiency_of_a_count_depends_on_the_first_cells_scores_of_that_count(tmp_path):
    cfg = make_config(tmp_path, criteria=["angular", "reverse"], recovery={}, ablation={"enabled": False})
    by = {s.key: s for s in StudyRun(cfg, Fake().stages(), progress=False).plan()}
    for k in (1, 3):
        scores = by[f"scores/angular-k{k}.json"]
        assert by[f"efficiency/k{k}"].inputs["after"] == {"efficiency/base": by["efficiency/base"].identity,
                                                          scores.key: scores.identity}
        assert by[f"efficiency/k{k}"].inputs["cells"] == [f"angular-r{0.2 if k == 1 else 0.5}",
                                                          f"reverse-r{0.2 if k == 1 else 0.5}"]
