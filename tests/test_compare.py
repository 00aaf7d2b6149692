"""``prunescope compare``: differences against hand-worked and independent references, refusals, outputs."""
import base64
import json
import re

import numpy as np
import pytest

from prunescope.cli import main
from prunescope.compare import compare_runs
from prunescope.errors import UsageError
from prunescope.report.tables import read_results_csv, write_results_csv

TASKS = {"add_mc": ("multiple_choice", 0.25), "add_gen": ("generate", 0.0)}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_eval(folder, flags: dict[str, list[bool]], *, ids=None, prompts=None):
    """metrics.json + samples.jsonl as evaluate() writes them, for per-task correctness ``flags``."""
    tasks, rows = {}, []
    for task, f in flags.items():
        kind, chance = TASKS[task]
        tasks[task] = {"kind": kind, "n": len(f), "accuracy": sum(f) / len(f), "ci95": [0.0, 1.0], "chance": chance}
        for i, ok in enumerate(f):
            item = (ids or {}).get(task, [f"{task}-eval-0-{j}" for j in range(len(f))])[i]
            prompt = (prompts or {}).get(task, f"question {i} of {task}")
            rows.append({"task": task, "id": item, "prompt": prompt if isinstance(prompt, str) else prompt[i],
                         "gold": 0, "correct": bool(ok)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write(folder / "metrics.json", {"model": "tiny", "seed": 0, "tasks": tasks})
    return folder


def write_study(root, cells: dict[str, dict[str, list[bool]]], **kw):
    """A study run folder: ``cells`` maps "baseline" or "<criterion>-r<ratio>" to per-task flags; results.csv is
    written by the report's own code, as the study writes it."""
    _write(root / "study.json", {"name": root.name, "config": {"tasks": list(TASKS), "seed": 0,
                                                               "criteria": ["reverse", "block_influence"]}})
    for name, flags in cells.items():
        folder = root / ("baseline" if name == "baseline" else f"cells/{name}")
        write_eval(folder, flags, **kw)
        if name != "baseline":
            crit, ratio = name.rsplit("-r", 1)
            _write(folder / "prunescope.json", {"criterion": crit, "ratio": float(ratio), "removed_layers": [1]})
    write_results_csv(root)
    return root


def flags(n, k, offset=0):
    """n items, right on items offset .. offset+k-1."""
    return [offset <= i < offset + k for i in range(n)]


def test_paired_difference_matches_the_binomial_reference(tmp_path):
    """B = A plus 10 items of 100 turned right. Each paired resample's difference is (draws of those 10 items)/100,
    a Binomial(100, 0.1)/100 variable: its 2.5/97.5% quantiles are the interval, worked out without any
    bootstrap. Resampling A and B independently (unpaired) gives an interval more than twice as wide."""
    from scipy.stats import binom

    a = write_eval(tmp_path / "a", {"add_gen": flags(100, 50)})
    b = write_eval(tmp_path / "b", {"add_gen": flags(100, 60)})
    res = compare_runs([a, b], out=tmp_path / "out", resamples=4000)
    (row,) = res["comparisons"][0]["tasks"]
    assert row["diff"] == pytest.approx(0.10) and row["acc_a"] == 0.5 and row["acc_b"] == 0.6 and row["n_a"] == 100
    lo, hi = binom.ppf([0.025, 0.975], 100, 0.1) / 100
    assert row["lo"] == pytest.approx(lo, abs=0.011) and row["hi"] == pytest.approx(hi, abs=0.011)
    assert row["verdict"] == "B higher"
    unpaired = compare_runs([a, b], out=tmp_path / "out2", resamples=4000, unpaired=True)["comparisons"][0]["tasks"][0]
    assert unpaired["hi"] - unpaired["lo"] > 2 * (hi - lo) and unpaired["lo"] < 0 < unpaired["hi"]


def test_difference_matches_scipy_paired_bootstrap(tmp_path):
    """Correlated random outcomes, items in a different order in B: the interval agrees with scipy's paired
    percentile bootstrap of mean(B) - mean(A) (matched by id, not by position)."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    a = rng.random(150) < 0.6
    b = np.where(rng.random(150) < 0.2, ~a, a)
    ids = [f"x-{i}" for i in range(150)]
    perm = rng.permutation(150)
    ra = write_eval(tmp_path / "a", {"add_mc": list(a)}, ids={"add_mc": ids})
    rb = write_eval(tmp_path / "b", {"add_mc": list(b[perm])}, ids={"add_mc": [ids[i] for i in perm]},
                    prompts={"add_mc": [f"question {i} of add_mc" for i in perm]})
    (row,) = compare_runs([ra, rb], out=tmp_path / "out", resamples=4000)["comparisons"][0]["tasks"]
    ref = bootstrap((a.astype(float), b.astype(float)), lambda x, y: y.mean() - x.mean(), paired=True,
                    vectorized=False, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert row["diff"] == pytest.approx(b.mean() - a.mean())
    assert row["lo"] == pytest.approx(ref.low, abs=0.015) and row["hi"] == pytest.approx(ref.high, abs=0.015)


def test_identical_runs_differ_by_exactly_zero(tmp_path):
    cells = {"baseline": {"add_mc": flags(40, 30), "add_gen": flags(40, 24)},
             "reverse-r0.25": {"add_mc": flags(40, 22), "add_gen": flags(40, 8)},
             "block_influence-r0.25": {"add_mc": flags(40, 26, 3), "add_gen": flags(40, 12, 5)}}
    a, b = write_study(tmp_path / "a", cells), write_study(tmp_path / "b", cells)
    comp = compare_runs([a, b], out=tmp_path / "out")["comparisons"][0]
    assert len(comp["tasks"]) == 6 and len(comp["retention"]) == 4
    for row in comp["tasks"] + comp["retention"]:
        assert row["diff"] == 0 and row["lo"] == 0 == row["hi"] and row["verdict"] == "not distinguishable"
    # retention is the report's: each run's value equals results.csv's mean chance-adjusted retention of the kind
    csv_rows = read_results_csv(a / "results.csv")
    for row in comp["retention"]:
        crit = row["cell"].split()[0]
        ref = next(r for r in csv_rows if r["criterion"] == crit and r["kind"] == row["kind"])
        assert row["ret_a"] == pytest.approx(ref["kind_retention_adj"], abs=1e-5)
    # and by hand: reverse keeps (22/40 - 0.25) / (30/40 - 0.25) of classification
    rev = next(r for r in comp["retention"] if r["cell"].startswith("reverse") and r["kind"] == "multiple_choice")
    assert rev["ret_a"] == pytest.approx((22 / 40 - 0.25) / (30 / 40 - 0.25))


def test_retention_difference_by_hand(tmp_path):
    """Same baseline, B's pruned cell right on 10 more generation items: B − A in adjusted generation retention
    is (10/40) / (24/40 - 0) = 0.4167."""
    base = {"add_mc": flags(40, 30), "add_gen": flags(40, 24)}
    a = write_study(tmp_path / "a", {"baseline": base, "reverse-r0.25": {"add_mc": flags(40, 20), "add_gen": flags(40, 6)}})
    b = write_study(tmp_path / "b", {"baseline": base, "reverse-r0.25": {"add_mc": flags(40, 20), "add_gen": flags(40, 16)}})
    comp = compare_runs([a, b], out=tmp_path / "out")["comparisons"][0]
    gen = next(r for r in comp["retention"] if r["kind"] == "generate")
    assert gen["ret_a"] == pytest.approx(6 / 24) and gen["ret_b"] == pytest.approx(16 / 24)
    assert gen["diff"] == pytest.approx(10 / 24) and gen["lo"] > 0 and gen["verdict"] == "B higher"
    mc = next(r for r in comp["retention"] if r["kind"] == "multiple_choice")
    assert mc["diff"] == 0 and mc["verdict"] == "not distinguishable"


def test_runs_with_different_seeds_on_the_same_items(tmp_path):
    """The same design evaluated twice with noise (a different seed elsewhere, e.g. training): every item is
    shared, point differences are the count differences, and another bootstrap seed moves only the intervals."""
    rng = np.random.default_rng(0)
    base = rng.random(120) < 0.7
    runs = []
    for s in (1, 2):
        noisy = np.where(np.random.default_rng(s).random(120) < 0.1, ~base, base)
        runs.append(write_eval(tmp_path / f"seed{s}", {"add_gen": list(noisy)}))
    r0 = compare_runs(runs, out=tmp_path / "o0", seed=0)["comparisons"][0]["tasks"][0]
    r1 = compare_runs(runs, out=tmp_path / "o1", seed=1)["comparisons"][0]["tasks"][0]
    a, b = (np.array([json.loads(x)["correct"] for x in (p / "samples.jsonl").read_text().splitlines()]) for p in runs)
    assert r0["n_a"] == 120 and r0["diff"] == r1["diff"] == pytest.approx(b.mean() - a.mean())
    assert (r0["lo"], r0["hi"]) != (r1["lo"], r1["hi"])
    assert r0["lo"] < 0 < r0["hi"] and r1["lo"] < 0 < r1["hi"]


def test_three_runs_are_each_compared_with_the_first(tmp_path):
    a = write_eval(tmp_path / "a", {"add_gen": flags(50, 20)})
    b = write_eval(tmp_path / "b", {"add_gen": flags(50, 20)})
    c = write_eval(tmp_path / "c", {"add_gen": flags(50, 45)})
    comps = compare_runs([a, b, c], out=tmp_path / "out")["comparisons"]
    assert [(x["a"], x["b"]) for x in comps] == [("A", "B"), ("A", "C")]
    assert comps[0]["tasks"][0]["diff"] == 0 and comps[1]["tasks"][0]["diff"] == pytest.approx(0.5)
    assert comps[1]["tasks"][0]["verdict"] == "C higher"


def test_disjoint_items_exit_2_with_one_line(tmp_path, capsys):
    a = write_eval(tmp_path / "a", {"add_gen": flags(30, 10)})
    b = write_eval(tmp_path / "b", {"add_gen": flags(30, 10)}, ids={"add_gen": [f"add_gen-eval-1-{i}" for i in range(30)]})
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "share no items" in err and "add_gen-eval-0-0" in err and "add_gen-eval-1-0" in err and "--unpaired" in err
    assert not (tmp_path / "out").exists()
    # asked for, runs on different items are compared as independent samples
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out"), "--unpaired", "--quiet"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["ONE"], "at least two runs"),
    (["ONE", "NOWHERE"], "no such folder"),
    (["ONE", "EMPTY"], "is not a run"),
    (["ONE", "ONE", "--resamples", "10"], "too few"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv, message):
    one = write_eval(tmp_path / "one", {"add_gen": flags(10, 5)})
    (tmp_path / "empty").mkdir()
    paths = {"ONE": str(one), "NOWHERE": str(tmp_path / "nowhere"), "EMPTY": str(tmp_path / "empty")}
    assert main(["compare", *[paths.get(x, x) for x in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_same_id_different_prompt_warns_and_is_left_out(tmp_path, caplog):
    a = write_eval(tmp_path / "a", {"add_gen": flags(20, 10)})
    prompts = [f"question {i} of add_gen" if i >= 5 else f"another question {i}" for i in range(20)]
    b = write_eval(tmp_path / "b", {"add_gen": flags(20, 10)}, prompts={"add_gen": prompts})
    with caplog.at_level("WARNING", logger="prunescope.compare"):
        row = compare_runs([a, b], out=tmp_path / "out")["comparisons"][0]["tasks"][0]
    assert row["n_a"] == 15 and row["acc_a"] == pytest.approx(5 / 15)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "5 item(s)" in warning and "--match id" in warning and "\n" not in warning
    assert compare_runs([a, b], out=tmp_path / "out", match="id")["comparisons"][0]["tasks"][0]["n_a"] == 20
    every = write_eval(tmp_path / "c", {"add_gen": flags(20, 10)}, prompts={"add_gen": "chat-wrapped"})
    with pytest.raises(UsageError, match="--match id"):
        compare_runs([a, every], out=tmp_path / "out")


def test_writes_markdown_html_and_figure_and_prints_a_table(tmp_path, capsys):
    cells = {"baseline": {"add_mc": flags(40, 30), "add_gen": flags(40, 24)},
             "reverse-r0.25": {"add_mc": flags(40, 22), "add_gen": flags(40, 8)}}
    a = write_study(tmp_path / "runs/a", cells)
    b = write_study(tmp_path / "runs/b", {**cells, "reverse-r0.25": {"add_mc": flags(40, 22), "add_gen": flags(40, 18)}})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"reverse r=0.25\s+add_gen\s+40\s+20%\s+45%\s+\+25 \[\+\d+, \+\d+\]\s+B higher", printed)
    assert str(out / "compare.md") in printed
    md = (out / "compare.md").read_text()
    assert "| reverse r=0.25 | add_gen | generative | 40 | 20% | 45% | +25 [" in md and "](compare.png)" in md
    html = (out / "compare.html").read_text()
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (out / "compare.png").read_bytes()
    assert not list(tmp_path.glob(".cmp*"))  # no temporary folder left behind
    # a rerun replaces the earlier comparison; an unrelated non-empty folder is protected
    assert main(["compare", str(a), str(b), "--out", str(out), "--quiet"]) == 0
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep/notes.txt").write_text("mine")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "keep")]) == 2
    assert (tmp_path / "keep/notes.txt").read_text() == "mine"


def test_default_out_names_both_runs(tmp_path, monkeypatch):
    a = write_eval(tmp_path / "x/default", {"add_gen": flags(10, 5)})
    b = write_eval(tmp_path / "y/default", {"add_gen": flags(10, 5)})
    monkeypatch.chdir(tmp_path)
    res = compare_runs([a / "metrics.json", b])
    assert res["paths"]["markdown"] == tmp_path.joinpath("compare-x-default-vs-y-default", "compare.md").relative_to(tmp_path)


def test_eval_outputs_of_two_tiny_models(tmp_path):
    """Two real ``evaluate`` outputs (different model seeds, same items): compare pairs every item and its
    differences are the per-item counts from samples.jsonl."""
    from common import make_tiny_model, make_tokenizer

    from prunescope.eval import evaluate

    tok, tasks = make_tokenizer(), ["arith_add_1d_mc", "brackets_gen"]
    outs = []
    for seed in (0, 1):
        folder = tmp_path / f"m{seed}"
        evaluate(make_tiny_model("llama", layers=2, seed=seed), tok, tasks, limit=12, progress=False, batch_size=16,
                 out=folder / "metrics.json")
        outs.append(folder)
    rows = compare_runs(outs, out=tmp_path / "out")["comparisons"][0]["tasks"]
    assert [r["task"] for r in rows] == tasks
    for row in rows:
        a, b = ([json.loads(x)["correct"] for x in (p / "samples.jsonl").read_text().splitlines()
                 if json.loads(x)["task"] == row["task"]] for p in outs)
        assert row["n_a"] == len(a) == 12 and row["diff"] == pytest.approx((sum(b) - sum(a)) / 12)
        assert row["lo"] <= row["diff"] <= row["hi"]


def test_cells_and_tasks_in_one_run_only_are_listed_not_compared(tmp_path):
    base = {"add_mc": flags(20, 15), "add_gen": flags(20, 12)}
    a = write_study(tmp_path / "a", {"baseline": base, "reverse-r0.25": base, "block_influence-r0.5": base})
    b = write_study(tmp_path / "b", {"baseline": {"add_mc": flags(20, 15)}, "reverse-r0.25": {"add_mc": flags(20, 15)}})
    (b / "cells/reverse-r0.25/samples.jsonl").unlink()  # a cell without per-item results
    comp = compare_runs([a, b], out=tmp_path / "out")["comparisons"][0]
    assert [(r["cell"], r["task"]) for r in comp["tasks"]] == [("baseline", "add_mc")]
    assert comp["only_a"] == ["block_influence r=0.5"] and comp["only_b"] == []
    md = (tmp_path / "out/compare.md").read_text()
    assert "only in A: block_influence r=0.5" in md and "reverse r=0.25 / add_mc: no per-item results" in md
    assert md.count("task add_gen only in A") == 1


def test_partly_overlapping_items_are_compared_on_the_shared_ones(tmp_path):
    """A holds items 0-29, B items 10-39 (right on all of them): the difference is over items 10-29 only."""
    a = write_eval(tmp_path / "a", {"add_gen": flags(30, 15)})  # right on 0-14: 5 of the shared 10-29
    b = write_eval(tmp_path / "b", {"add_gen": [True] * 30}, ids={"add_gen": [f"add_gen-eval-0-{i}" for i in range(10, 40)]},
                   prompts={"add_gen": [f"question {i} of add_gen" for i in range(10, 40)]})
    comp = compare_runs([a, b], out=tmp_path / "out")["comparisons"][0]
    (row,) = comp["tasks"]
    assert row["n_a"] == 20 and row["acc_a"] == pytest.approx(5 / 20) and row["acc_b"] == 1.0
    assert "eval / add_gen: compared on the 20 shared items of 30 in A and 30 in B" in comp["notes"]
