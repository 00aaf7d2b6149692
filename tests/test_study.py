"""The whole study on a tiny saved model: every file it writes, resume after an interruption, bad configs."""
import json
import time
from pathlib import Path

import pytest

from prunescope.errors import UsageError
from prunescope.study import Stages, StudyConfig, load_study_config, run_study
from prunescope.study.config import CONFIG_DIR, RecoveryPlan


class Counting:
    """Wraps the real stage functions, counting calls and optionally failing on the n-th call of one."""

    def __init__(self, fail: str | None = None, after: int = 0):
        self.calls: dict[str, int] = {}
        self.fail, self.after = fail, after

    def stages(self) -> Stages:
        real = Stages().resolved()

        def wrap(name):
            fn = getattr(real, name)

            def call(*args, **kwargs):
                self.calls[name] = self.calls.get(name, 0) + 1
                if name == self.fail and self.calls[name] > self.after:
                    raise KeyboardInterrupt  # what Ctrl-C or a kill looks like to the code in between
                return fn(*args, **kwargs)
            return call

        return Stages(**{n: wrap(n) for n in ("load_model", "score_layers", "evaluate", "measure_efficiency")})



def _untimed(path) -> list[str]:
    """results.csv without the measured-speed columns, which differ between any two timings."""
    import csv
    rows = list(csv.reader(path.read_text().splitlines()))
    drop = {i for i, name in enumerate(rows[0]) if name.startswith(("decode_speedup", "speed_verdict"))}
    return [",".join(v for i, v in enumerate(row) if i not in drop) for row in rows]

def tiny_config(model_dir, out, **overrides) -> StudyConfig:
    settings = dict(
        name="tiny", model=str(model_dir), dtype="float32", device="cpu",
        tasks=["arith_add_1d_gen", "arith_add_1d_mc"], limit=2, criteria=["reverse", "block_influence", "angular"],
        ratios=[0.2, 0.5], scoring={"calib": ["The quick brown fox jumps over the lazy dog. " * 4] * 2},
        efficiency={"prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "warmup": 1},
        ablation={"enabled": True, "limit": 1, "tasks": ["arith_add_1d_mc"]},
        recovery={"methods": ["lora"], "criteria": ["block_influence"], "ratios": [0.5],
                  "settings": {"data": "dataset", "prompts": "arith_add_1d_gen", "num_prompts": 4, "max_steps": 2,
                               "batch_size": 2, "lora_r": 2, "save_every": 0}},
        out=str(out))
    settings.update(overrides)
    from prunescope.study.config import from_mapping
    return from_mapping(StudyConfig, settings)


def _snapshot(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    counter = Counting()
    start = time.perf_counter()
    run_study(tiny_config(tiny_model_dir, out), stages=counter.stages())
    return out, counter, time.perf_counter() - start


def test_study_writes_every_artifact(finished_run):
    run, counter, seconds = finished_run
    for rel in ["study.json", "results.csv", "report.md", "report.html", "baseline/metrics.json",
                "baseline/samples.jsonl", "baseline/efficiency.json", "scores/reverse.json",
                "scores/block_influence.json", "scores/angular-k1.json", "scores/angular-k3.json",
                "ablation/ablation.json", "ablation/base.json", "figures/retention.png", "figures/importance.png",
                "figures/ablation.png", "figures/frontier.png"]:
        assert (run / rel).is_file(), rel
    for crit in ("reverse", "block_influence", "angular"):
        for ratio, k in ((0.2, 1), (0.5, 3)):
            cell = run / "cells" / f"{crit}-r{ratio:g}"
            for name in ("prunescope.json", "metrics.json", "samples.jsonl", "efficiency.json"):
                assert (cell / name).is_file(), (cell, name)
            meta = json.loads((cell / "prunescope.json").read_text())
            assert len(meta["removed_layers"]) == k and meta["num_layers_after"] == 6 - k
            eff = json.loads((cell / "efficiency.json").read_text())
            assert eff["num_layers"] == 6 - k and eff["speedup"]["ideal"] > 1
            # the base timed again alongside, its rounds kept; 2 rounds of each are too few for an interval
            assert len(eff["base_rounds"]["decode_tokens_per_s_all"]) == 2
            iv = eff["speedup"]["decode_interval"]
            assert iv["paired"] and iv["rounds"] == [2, 2] and iv["lo"] is None
    assert json.loads((run / "cells/reverse-r0.5/prunescope.json").read_text())["removed_layers"] == [3, 4, 5]
    assert not list(run.rglob(".pending"))
    rec = run / "cells/block_influence-r0.5/recovery-lora"
    assert (rec / "train_log.jsonl").is_file() and (rec / "metrics.json").is_file()
    assert not (rec / "merged").exists()  # kept only when recovery.keep_merged is set
    lines = (run / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * (1 + 3 * 2 + 1)  # header + tasks x (baseline + 6 cells + 1 recovered)
    info = json.loads((run / "study.json").read_text())
    assert info["num_layers"] == 6 and info["finished"] and info["config"]["criteria"][2] == "angular"
    assert "torch" in info["versions"]
    ablation = json.loads((run / "ablation/ablation.json").read_text())
    assert len(ablation["tasks"]["arith_add_1d_mc"]["drop"]) == 6
    # scores computed once per criterion (angular once per layer count), models loaded once
    assert counter.calls["score_layers"] == 4 and counter.calls["load_model"] == 2  # base + recovered
    assert seconds < 120


def test_rerun_recomputes_nothing(finished_run, tiny_model_dir):
    run, _, _ = finished_run
    before = _snapshot(run)
    counter = Counting()
    run_study(tiny_config(tiny_model_dir, run), stages=counter.stages())
    assert counter.calls == {}  # the model is not even loaded
    after = _snapshot(run)
    for rel in ("results.csv", "baseline/metrics.json", "cells/angular-r0.5/metrics.json", "scores/reverse.json"):
        assert after[rel] == before[rel], rel


def test_resume_after_interruption(tiny_model_dir, tmp_path, finished_run):
    reference, _, _ = finished_run
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, ablation={"enabled": False}, recovery={"methods": []})
    # interrupt in the middle of the grid: the 4th evaluation (baseline + 2 cells done) raises
    with pytest.raises(KeyboardInterrupt):
        run_study(config, stages=Counting(fail="evaluate", after=3).stages())
    done = sorted(p.parent.name for p in out.glob("cells/*/metrics.json"))
    assert done == ["reverse-r0.2", "reverse-r0.5"]
    finished = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/metrics.json")}
    assert not (out / "results.csv").exists()
    counter = Counting()
    run_study(config, stages=counter.stages())
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished cells untouched
    assert counter.calls["evaluate"] == 6 - 2  # only the cells left
    assert "score_layers" not in counter.calls  # scores are reused from scores/*.json
    expected = [line for line in _untimed(reference / "results.csv") if ",lora," not in line]
    assert _untimed(out / "results.csv") == expected
    info = json.loads((out / "study.json").read_text())
    assert len(info["resumed"]) == 1 and info["finished"]


def test_different_identity_is_refused(finished_run, tiny_model_dir):
    run, _, _ = finished_run
    with pytest.raises(UsageError, match="different limit"):
        run_study(tiny_config(tiny_model_dir, run, limit=4))


def test_packaged_configs_load():
    default = load_study_config("default")
    assert default.model == "smollm2-135m" and default.ratios and default.recovery.methods
    # sized for its claims: the limit gives a 95% half-width of at most 0.07 even at p = 0.5; a task whose pool of
    # distinct questions is smaller is capped there, and the config says so for each such task
    from prunescope.eval.metrics import wilson_interval
    from prunescope.tasks import get_task
    lo, hi = wilson_interval(default.limit // 2, default.limit)
    assert (hi - lo) / 2 <= 0.07
    text = (CONFIG_DIR / "default.yaml").read_text()
    for name in default.tasks:
        pool = len(get_task(name).items(None))
        if pool < default.limit:
            line = next(line for line in text.splitlines() if line.strip().startswith(f"- {name} "))
            assert f"{pool} questions" in line, (name, pool)
    kinds = {"mc" if t.endswith("_mc") or "first_digit" in t else "gen" for t in default.tasks}
    assert kinds == {"mc", "gen"}
    paper = load_study_config("paper")
    assert paper.ratios == [0.125, 0.25] and set(paper.criteria) == {"reverse", "block_influence", "greedy_task"}
    assert paper.recovery.settings["lora_r"] == 64
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} >= {"default", "paper"}


@pytest.mark.parametrize("text, match", [
    ("ratio: [0.1]\n", "unknown key 'ratio'; did you mean 'ratios'"),
    ("ratios: [0.1, 1.5]\n", r"ratios\[1\]|ratios: 1.5 is not a fraction"),
    ("ratios: [0]\n", "ratios: 0"),
    ("recovery:\n  method: [lora]\n", "unknown key recovery.'method'|unknown key 'recovery.method'|recovery.method"),
    ("limit: lots\n", "limit"),
    ("efficiency:\n  repeats: 0\n", "efficiency.repeats"),
    ("tasks: []\n", "tasks"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("ratios: [0.1\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, match):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_study_config(path)


def test_unknown_criterion_and_task_suggest_names(tiny_model_dir, tmp_path):
    with pytest.raises(UsageError, match="criteria: unknown criterion 'block_influense'; did you mean 'block_influence'"):
        run_study(tiny_config(tiny_model_dir, tmp_path / "a", criteria=["block_influense"], recovery={}))
    with pytest.raises(UsageError, match="tasks: .*arith_add_1d_gem"):
        run_study(tiny_config(tiny_model_dir, tmp_path / "b", tasks=["arith_add_1d_gem"]))
    assert not (tmp_path / "a").exists()


def test_cli_errors_exit_2(tmp_path, capsys):
    from prunescope.cli import main
    assert main(["study", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("critera: [reverse]\n")
    assert main(["study", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'criteria'" in err and str(bad) in err and err.count("\n") == 1


def test_recovery_plan_selects_cells():
    cfg = StudyConfig(criteria=["reverse", "block_influence"], ratios=[0.1, 0.2],
                      recovery=RecoveryPlan(methods=["lora"], criteria=["block_influence"], ratios=[0.2]))
    assert cfg.recovered_cells() == [("block_influence", 0.2)]
    with pytest.raises(UsageError, match="recovery.ratios: 0.3 is not among ratios"):
        StudyConfig(ratios=[0.1], recovery=RecoveryPlan(methods=["lora"], ratios=[0.3]))


def test_shipped_configs_name_only_registered_tasks_and_criteria():
    """Both shipped configs load, and every task, criterion and greedy_task calibration task exists
    (greedy_task's tasks must have a calibration split, which HumanEval has not)."""
    from prunescope.criteria import CRITERIA
    from prunescope.study.config import load_study_config
    from prunescope.tasks import get_task
    for name in ("default", "paper"):
        config = load_study_config(name)
        for task in config.tasks:
            if not task.startswith("lmeval:"):
                get_task(task)
        for criterion in config.criteria:
            CRITERIA.get(criterion)
        for task in (config.scoring or {}).get("tasks", []):
            assert get_task(task).family != "humaneval", task
            if task != "gsm8k":  # gsm8k needs its data file; its calib split is the train file
                assert get_task(task).items(2, split="calib")


# ---- step identities: a changed setting recomputes exactly the steps it can change ----

def _stale(config) -> set[str]:
    """Keys of the finished steps that a run with ``config`` would recompute (finished under other inputs)."""
    from prunescope.study.runner import StudyRun
    from prunescope.study.steps import Manifest
    run = StudyRun(config)
    manifest = Manifest(config.out_dir)
    return {s.key for s in run.plan() if manifest.stale(s)}


CELLS = {f"cells/{c}-r{r}" for c in ("reverse", "block_influence", "angular") for r in ("0.2", "0.5")}
SCORES = {"scores/reverse.json", "scores/block_influence.json", "scores/angular-k1.json", "scores/angular-k3.json"}
RECOVERY = {"block_influence-r0.5/recovery-lora"}
EFF_CELLS = {"efficiency/k1", "efficiency/k3"}
ABLATION = {"ablation/base"} | {f"ablation/layer-{i:03d}" for i in range(6)}
EVERYTHING = {"baseline"} | SCORES | CELLS | RECOVERY | {"efficiency/base"} | EFF_CELLS | ABLATION


@pytest.mark.parametrize("change, expected", [
    ({}, set()),
    ({"limit": 3}, {"baseline"} | CELLS | RECOVERY),
    ({"tasks": ["arith_add_1d_gen"]}, {"baseline"} | CELLS | RECOVERY),
    ({"scoring": {"calib": ["Another calibration text entirely. " * 4] * 2}}, SCORES | CELLS | RECOVERY | EFF_CELLS),
    ({"recovery": {"methods": ["lora"], "criteria": ["block_influence"], "ratios": [0.5],
                   "settings": {"data": "dataset", "prompts": "arith_add_1d_gen", "num_prompts": 4, "max_steps": 2,
                                "batch_size": 2, "lora_r": 2, "save_every": 0, "lr": 1e-3}}}, RECOVERY),
    ({"efficiency": {"prompt_tokens": 8, "new_tokens": 4, "repeats": 3, "warmup": 1}}, {"efficiency/base"} | EFF_CELLS),
    ({"ablation": {"enabled": True, "limit": 2, "tasks": ["arith_add_1d_mc"]}}, ABLATION),
    ({"seed": 1}, EVERYTHING),
    ({"dtype": "bfloat16"}, EVERYTHING),
])
def test_changed_settings_make_exactly_their_steps_stale(finished_run, tiny_model_dir, change, expected):
    run, _, _ = finished_run
    assert _stale(tiny_config(tiny_model_dir, run, **change)) == expected


def test_new_version_makes_everything_stale(finished_run, tiny_model_dir, monkeypatch):
    import prunescope
    run, _, _ = finished_run
    monkeypatch.setattr(prunescope, "__version__", "99.0")
    assert _stale(tiny_config(tiny_model_dir, run)) == EVERYTHING


def test_changed_recovery_is_refused_then_recomputed_with_force(finished_run, tiny_model_dir, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    settings = {"data": "dataset", "prompts": "arith_add_1d_gen", "num_prompts": 4, "max_steps": 2, "batch_size": 2,
                "lora_r": 2, "save_every": 0, "lr": 1e-3}
    config = tiny_config(tiny_model_dir, run, recovery={"methods": ["lora"], "criteria": ["block_influence"],
                                                        "ratios": [0.5], "settings": settings})
    with pytest.raises(UsageError, match=r"different recovery\.lr: 1 finished step\(s\) would change \(recover lora "
                                         r"block_influence r=0.5\); pass --force"):
        run_study(config)
    before = _snapshot(run)
    counter = Counting()
    run_study(config, stages=counter.stages(), force=True)
    after = _snapshot(run)
    rec = "cells/block_influence-r0.5/recovery-lora/"
    changed = {p for p in before if p in after and after[p] != before[p] and not p.startswith(rec)}
    assert {p for p in changed if not p.startswith("figures/")} <= {
        "results.csv", "report.md", "report.html", "study.json", "run.json", "steps.json", "study.log"}
    assert after[rec + "metrics.json"] != before[rec + "metrics.json"]
    assert json.loads((run / rec / "recover.json").read_text())["config"]["lr"] == 1e-3
    assert counter.calls["evaluate"] == 1  # the recovered model only
    log = (run / "study.log").read_text()
    assert "recomputing recover lora block_influence r=0.5: recovery.lr changed" in log


def test_run_trail(finished_run):
    run, _, _ = finished_run
    trail = json.loads((run / "run.json").read_text())
    assert trail["config"]["name"] == "tiny" and trail["finished"] and trail["command"]
    assert {"torch", "prunescope"} <= set(trail["versions"]) and trail["host"]["platform"]
    assert trail["steps"]["baseline"]["seconds"] >= 0 and len(trail["steps"]) == len(EVERYTHING)
    log = (run / "study.log").read_text()
    assert "eval baseline" in log and "study finished" in log
    # not a terminal: one plain line per step, with elapsed time and (after the first step) an estimate
    steps = [line for line in log.splitlines() if " INFO [" in line]
    assert len(steps) == len(EVERYTHING) and "\r" not in log
    assert "estimate after the first step" in steps[0] and all("left, done about" in s for s in steps[1:])
    first_plan = next(line for line in log.splitlines() if " plan: " in line)
    assert first_plan.endswith("plan: 7 eval, 4 scores, 1 recovery, 3 efficiency, 7 ablation")


def test_ablation_names_layers_only_with_interval(finished_run):
    run, _, _ = finished_run
    ab = json.loads((run / "ablation/ablation.json").read_text())
    info = ab["kinds"]["multiple_choice"]
    assert len(info["lo"]) == 6 and all(lo <= d <= hi for d, lo, hi in zip(info["drop"], info["lo"], info["hi"]))
    assert info["critical"] == [i for i in range(6) if info["lo"][i] > 0]
    base = json.loads((run / "ablation/base.json").read_text())
    assert len(base["items"]["arith_add_1d_mc"]["ids"]) == 1


def test_estimate_uses_measured_steps_of_the_same_kind():
    from prunescope.study.steps import estimate_seconds
    from prunescope.study.steps import Step
    todo = [Step(k, k, {}, [], lambda: None) for k in ("cells/a-r0.1", "cells/a-r0.2", "scores/x.json", "ablation/base")]
    assert estimate_seconds(todo, {}) is None
    timings = {"baseline": {"seconds": 10.0}, "cells/b-r0.1": {"seconds": 20.0}, "scores/y.json": {"seconds": 4.0}}
    # evaluations average 15 s, scores 4 s, ablation unmeasured: the mean of all measured steps (34 / 3)
    assert estimate_seconds(todo, timings) == pytest.approx(15 + 15 + 4 + 34 / 3)


def test_estimate_scales_unmeasured_evaluations_by_their_items():
    from prunescope.study.steps import Step, estimate_seconds
    todo = [Step("ablation/layer-000", "a", {}, [], lambda: None, work=10)]
    timings = {"baseline": {"seconds": 40.0, "work": 400}, "scores/y.json": {"seconds": 4.0}}
    assert estimate_seconds(todo, timings) == pytest.approx(1.0)  # 10 items at 0.1 s per item


def test_study_init_writes_a_config_that_loads_the_same(tmp_path, capsys):
    """`study --init` copies the packaged default with its comments; the copy loads to the same settings, and a
    second --init to the same file is refused (exit 2) instead of overwriting the user's edits."""
    import yaml

    from prunescope.cli import main
    from prunescope.study.config import CONFIG_DIR, load_study_config

    dest = tmp_path / "my_study.yaml"
    assert main(["study", "--init", str(dest)]) == 0
    text = dest.read_text()
    assert text == (CONFIG_DIR / "default.yaml").read_text() and text.count("#") > 20
    mine, packaged = load_study_config(str(dest)), load_study_config("default")
    assert (mine.tasks, mine.criteria, mine.ratios, mine.limit) == (packaged.tasks, packaged.criteria,
                                                                   packaged.ratios, packaged.limit)
    assert yaml.safe_load(text)["tasks"] == packaged.tasks
    assert main(["study", "--init", str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["study", "--list-configs"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_sigkilled_study_resumes_to_identical_results(tiny_model_dir, tmp_path, finished_run):
    """A real SIGKILL (no handler runs, files may be half-written) in the middle of the grid: the rerun
    finishes the study and writes the same results.csv as the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    reference, _, _ = finished_run
    out = tmp_path / "run"
    settings = dict(
        name="tiny", model=str(tiny_model_dir), dtype="float32", device="cpu",
        tasks=["arith_add_1d_gen", "arith_add_1d_mc"], limit=2, criteria=["reverse", "block_influence", "angular"],
        ratios=[0.2, 0.5], scoring={"calib": ["The quick brown fox jumps over the lazy dog. " * 4] * 2},
        efficiency={"prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "warmup": 1},
        ablation={"enabled": False}, recovery={"methods": []})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "prunescope", "study", "--config", str(cfg), "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    first_cell = out / "cells" / "reverse-r0.2" / "metrics.json"
    deadline = time.monotonic() + 240
    while not first_cell.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first_cell.exists() and proc.poll() is None, "the study ended before it could be killed mid-grid"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "results.csv").exists()  # killed before the end
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [line for line in _untimed(reference / "results.csv") if ",lora," not in line]
    assert _untimed(out / "results.csv") == expected
