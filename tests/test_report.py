"""The report is built from a run folder's files alone: synthetic artifacts in, report + figures out."""
import base64
import csv
import json
import math
import re

import pytest

from prunescope.errors import UsageError
from prunescope.report import build_report, collect_results
from prunescope.report.findings import recommend
from prunescope.report.tables import read_results_csv, spearman, write_results_csv

L = 8
TASKS = {"add_mc": ("multiple_choice", 0.25, 0.80), "add_gen": ("generate", 0.0, 0.60),
         "br_gen": ("generate", 0.0, 0.90)}


def _metrics(scale_mc: float, scale_gen: float, n: int = 50, folder=None) -> dict:
    """metrics.json content; with ``folder``, also its samples.jsonl. Item i is right when i < accuracy * n,
    so a pruned model is right on a subset of the items the base got right (paired, as in practice)."""
    tasks, samples = {}, []
    for name, (kind, chance, base) in TASKS.items():
        k = round(base * (scale_mc if kind == "multiple_choice" else scale_gen) * n)
        acc = k / n
        half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-4) / n)
        tasks[name] = {"kind": kind, "n": n, "accuracy": acc, "ci95": [max(0, acc - half), min(1, acc + half)],
                       "chance": chance, "normalized": acc}
        samples += [{"task": name, "id": f"{name}-{i}", "correct": i < k} for i in range(n)]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    return {"model": "tiny", "seed": 0, "tasks": tasks}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(root, *, with_optional: bool = True, n: int = 50):
    """A run folder as the study writes it, with made-up numbers that decline with the ratio."""
    criteria, ratios = ["reverse", "block_influence"], [0.25, 0.5]
    config = {"name": "synthetic", "model": "tiny", "tasks": list(TASKS), "criteria": criteria, "ratios": ratios,
              "limit": 50, "seed": 0, "recovery": {"methods": ["lora"], "ratios": [0.25]},
              "report": {"retention_target": 0.9}}
    _write(root / "study.json", {"name": "synthetic", "config": config, "num_layers": L, "started": "t0",
                                 "finished": "t1", "seeds": {"study": 0}, "versions": {"prunescope": "0.1.0"},
                                 "isolation": {"summary": "separate uid, seccomp; missing: landlock"}})
    _write(root / "baseline/metrics.json", _metrics(1.0, 1.0, n=n, folder=root / "baseline"))
    eff = {"num_layers": L, "parameters": {"total": 1000, "blocks": 800}, "memory": {"peak_bytes": 2 ** 20,
           "method": "test"}, "prefill_ms": 10.0, "decode_tokens_per_s": 100.0, "flops_per_token": {"total": 1.0},
           "settings": {"repeats": 3, "warmup": 1, "prompt_tokens": 8, "new_tokens": 4, "batch_size": 1},
           "device": "cpu", "dtype": "float32"}
    if with_optional:
        _write(root / "baseline/efficiency.json", eff)
    for ci, crit in enumerate(criteria):
        order = list(range(L - 1, -1, -1)) if crit == "reverse" else [3, 4, 2, 5, 1, 6, 0, 7]
        scores = [0.0] * L
        for pos, layer in enumerate(order):
            scores[layer] = pos / (L - 1)
        _write(root / f"scores/{crit}.json", {"model": "tiny", "criterion": crit, "num_layers": L, "scores": scores,
                                              "order": order, "config": {}})
        for ratio in ratios:
            k = int(ratio * L)
            cell = root / f"cells/{crit}-r{ratio:g}"
            _write(cell / "prunescope.json", {"criterion": crit, "ratio": ratio, "removed_layers": sorted(order[:k]),
                                              "num_layers_before": L, "num_layers_after": L - k})
            _write(cell / "metrics.json", _metrics(1 - 0.2 * ratio - 0.05 * ci, 1 - 1.2 * ratio, n=n, folder=cell))
            if with_optional:
                speed = {"decode": L / (L - k) * 0.9, "prefill": L / (L - k), "ideal": L / (L - k) * 0.95,
                         "layer_ratio": L / (L - k), "parameters": 1.2, "of_ideal": 0.9,
                         # rank intervals over paired rounds: at 25% every round beat the base's; at 50% they overlap
                         "decode_interval": {"lo": 1.1, "hi": 1.3, "level": 0.9, "paired": True} if ratio == 0.25
                         else {"lo": 0.95, "hi": 2.4, "level": 0.9, "paired": True}}
                _write(cell / "efficiency.json", {**eff, "num_layers": L - k, "speedup": speed})
            if ratio == 0.25:
                _write(cell / "recovery-lora/metrics.json", _metrics(0.99, 0.85, n=n, folder=cell / "recovery-lora"))
                _write(cell / "recovery-lora/recover.json", {"data": {
                    "label": "general recovery", "prompt_source": "self-instruct", "prompts": 32}})
    if with_optional:
        ablation = {"limit": 10, "num_layers": L, "layers": list(range(L)), "tasks": {
            t: {"kind": k, "base_accuracy": b, "accuracy": [b - 0.05 * (i % 3) for i in range(L)],
                "drop": [0.05 * (i % 3) for i in range(L)]} for t, (k, _, b) in TASKS.items()}}
        # per kind: the mean drop with its interval; layer 2 clearly matters for generation, nothing for classification
        ablation["kinds"] = {
            "multiple_choice": {"drop": [0.05] * L, "lo": [-0.02] * L, "hi": [0.12] * L, "critical": []},
            "generate": {"drop": [0.3 if i == 2 else 0.02 for i in range(L)],
                         "lo": [0.2 if i == 2 else -0.03 for i in range(L)],
                         "hi": [0.4 if i == 2 else 0.07 for i in range(L)], "critical": [2]}}
        _write(root / "ablation/ablation.json", ablation)
    return root


def test_results_csv_rows_and_retention(tmp_path):
    run = make_run(tmp_path / "run")
    write_results_csv(run)
    rows = read_results_csv(run / "results.csv")
    # baseline + 2 criteria x 2 ratios + 2 recovered cells, each with 3 tasks
    assert len(rows) == 3 * (1 + 4 + 2)
    with open(run / "results.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:13] == ["criterion", "ratio", "layers_removed", "removed", "recovery", "task", "kind", "n",
                           "accuracy", "ci_lo", "ci_hi", "chance", "retention"]
    assert {"retention_adj", "retention_adj_lo", "retention_adj_hi", "gap", "gap_lo", "gap_hi", "verdict"} <= set(header)
    row = next(r for r in rows if r["criterion"] == "reverse" and r["ratio"] == 0.5 and r["task"] == "add_gen"
               and r["recovery"] == "none")
    assert row["layers_removed"] == 4 and row["removed"] == [4, 5, 6, 7]
    assert row["retention"] == pytest.approx(12 / 30)  # 0.6 * 0.4 * 50 = 12 right of the base's 30
    mc = next(r for r in rows if r["criterion"] == "reverse" and r["ratio"] == 0.25 and r["task"] == "add_mc"
              and r["recovery"] == "none")
    # 38 of 50 right against the base's 40, chance 0.25: (0.76 - 0.25) / (0.80 - 0.25)
    assert mc["retention_adj"] == pytest.approx(0.51 / 0.55)
    assert mc["retention_adj_lo"] < mc["retention_adj"] <= mc["retention_adj_hi"] <= 1.0
    assert mc["retention"] == pytest.approx(38 / 40)
    # generation lost far more in that cell: the gap's interval excludes 0
    assert mc["gap"] == pytest.approx(0.51 / 0.55 - (21 / 30 + 32 / 45) / 2)
    assert mc["gap_lo"] > 0 and mc["verdict"] == "generation kept less"
    assert {r["recovery"] for r in rows} == {"none", "lora"}
    assert collect_results(run)[0]["criterion"] == "none"


def _mini_run(root, *, n, mc_right, gen_right):
    """Baseline and one pruned cell; base right on the first 80% of items, the cell on the first
    ``mc_right`` / ``gen_right`` items of each task."""
    config = {"name": "mini", "model": "tiny", "tasks": ["q_mc", "q_gen"], "criteria": ["reverse"], "ratios": [0.25],
              "seed": 0}
    _write(root / "study.json", {"name": "mini", "config": config, "num_layers": L})
    for folder, right in ((root / "baseline", {"q_mc": int(0.8 * n), "q_gen": int(0.8 * n)}),
                          (root / "cells/reverse-r0.25", {"q_mc": mc_right, "q_gen": gen_right})):
        tasks = {t: {"kind": "multiple_choice" if t == "q_mc" else "generate", "n": n, "accuracy": k / n,
                     "ci95": [0, 1], "chance": 0.25 if t == "q_mc" else 0.0} for t, k in right.items()}
        _write(folder / "metrics.json", {"tasks": tasks})
        (folder / "samples.jsonl").write_text("".join(json.dumps({"task": t, "id": i, "correct": i < k}) + "\n"
                                                      for t, k in right.items() for i in range(n)))
    _write(root / "cells/reverse-r0.25/prunescope.json", {"criterion": "reverse", "ratio": 0.25, "removed_layers": [6, 7],
                                                          "num_layers_before": L, "num_layers_after": L - 2})
    return root


@pytest.mark.parametrize("n, gen_right, counts", [
    (20, 15, "generation kept less in 0, classification kept less in 0, not distinguishable in 1 of 1"),
    (400, 240, "generation kept less in 1, classification kept less in 0, not distinguishable in 0 of 1"),
])
def test_gap_claim_follows_its_interval(tmp_path, n, gen_right, counts):
    """Generation's point estimate is lower in both runs (94% vs 100% of the base's accuracy on 20 items;
    75% vs 100% on 400): only the run whose interval excludes 0 may say 'generation kept less'."""
    run = _mini_run(tmp_path / "run", n=n, mc_right=int(0.8 * n), gen_right=gen_right)
    build_report(run)
    row = next(r for r in read_results_csv(run / "results.csv") if r["criterion"] == "reverse")
    assert row["gap"] > 0
    assert (row["gap_lo"] > 0) == (n == 400)
    assert row["verdict"] == ("generation kept less" if n == 400 else "not distinguishable")
    md = (run / "report.md").read_text()
    assert counts in md


def test_report_states_unfinished_cells(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "cells/block_influence-r0.5/metrics.json").unlink()
    build_report(run)
    md = (run / "report.md").read_text()
    assert "Unfinished:" in md and "block_influence r=0.5" in md
    from prunescope.report.build import unfinished_cells
    assert unfinished_cells(run, json.loads((run / "study.json").read_text())["config"]) == ["block_influence r=0.5"]
    (run / "cells/block_influence-r0.25/recovery-lora/metrics.json").unlink()
    assert unfinished_cells(run, json.loads((run / "study.json").read_text())["config"]) == [
        "block_influence r=0.25 + lora recovery", "block_influence r=0.5"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    return run, build_report(run)


def test_report_from_artifacts_alone(built):
    run, paths = built
    for name in ("retention", "importance", "ablation", "frontier"):
        png = run / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert paths[name] == png
    md = (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    assert (run / "results.csv").is_file()  # rebuilt from the metrics files when missing
    # a recovery row says what it trained on (recover.json), in results.csv and in the table of every result
    csv_rows = list(csv.DictReader((run / "results.csv").open()))
    assert {r["recovery_data"] for r in csv_rows if r["recovery"] == "lora"} == {"general recovery: self-instruct"}
    assert {r["recovery_data"] for r in csv_rows if r["recovery"] == "none"} == {""}
    assert "| lora (general recovery: self-instruct) |" in md
    # speed claims follow the speedup's interval: the 50% cut's rounds overlap the base's, the 25% cut's do not
    assert ("Keeping 4 of 8 layers is not distinguishable from the base's decode speed on this machine "
            "(1.80x [0.95, 2.40];") in md
    assert "| 1.20x [1.10, 1.30] faster |" in md and "| 1.80x [0.95, 2.40] |" in md
    verdicts = {(r["criterion"], r["ratio"], r["recovery"]): r["speed_verdict"] for r in csv_rows}
    assert verdicts[("reverse", "0.25", "none")] == "faster" and verdicts[("none", "0", "none")] == ""
    assert verdicts[("reverse", "0.5", "none")] == "not distinguishable"
    assert {r["decode_speedup_lo"] for r in csv_rows if r["ratio"] == "0.25" and r["recovery"] == "none"} == {"1.1"}
    # findings in words, computed from the numbers. At 25% removed the MC task keeps (38-12.5)/(40-12.5) = 93%
    # (reverse) and (36-12.5)/(40-12.5) = 85% (block_influence) above chance; generation (21/30 + 32/45) / 2 = 71%
    assert ("Removing 25% of layers (2 of 8) keeps 85% to 93% of classification accuracy above chance and 71% of "
            "generative accuracy above chance") in md
    # after recovery: MC 40 of 40 (100%), generation (26/30 + 38/45) / 2 = 86%
    assert re.search(r"lora recovery brings chance-adjusted retention from classification 93% \[\d+%, \d+%\] and "
                     r"generative 71% \[\d+%, \d+%\] to 100% \[100%, 100%\] and 86% \[\d+%, \d+%\]", md)
    assert "no recovered cell meets it either" in md
    assert "How to read this" in md and "paired bootstrap" in md
    assert "Headline: retention by task kind" in md
    # the ablation names only the layer whose interval excludes 0, and says when the data cannot tell
    assert "for generative tasks, 1 of 8 layers cost accuracy beyond their 95% interval (layer 2)" in md
    assert "no layer's drop on classification tasks has a 95% interval excluding 0" in md
    assert "the data cannot tell" in md
    assert "Recommended maximum pruning ratio" in md and "none qualifies" in md
    assert "Spearman" in md and "Provenance" in md
    assert "model-written code ran in: separate uid, seccomp; missing: landlock" in md
    for fig in ("figures/retention.png", "figures/frontier.png"):
        assert f"]({fig})" in md
    # self-contained: every figure embedded, nothing linked
    assert html.count("data:image/png;base64,") == 4 and 'src="figures/' not in html
    embedded = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded)[:4] == b"\x89PNG"


def test_report_without_optional_artifacts(tmp_path):
    run = make_run(tmp_path / "run", with_optional=False)
    paths = build_report(run, retention_target=0.5)
    assert "ablation" not in paths and "frontier" not in paths
    assert not (run / "figures/ablation.png").exists() and not (run / "figures/frontier.png").exists()
    md = (run / "report.md").read_text()
    assert "### Efficiency" not in md and "ablation" not in md.lower()
    # the recommendation at a 50% target, from make_run's numbers (chance-adjusted): classification (reverse) keeps
    # (38-12.5)/(40-12.5) = 93% at 0.25 and (36-12.5)/(40-12.5) = 85% at 0.5; generative (21/30 + 32/45) / 2 = 71%
    # at 0.25 and (12/30 + 18/45) / 2 = 40% at 0.5
    assert "retention >= 50%" in md
    assert "| classification | reverse | none | 0.5 | 4 | 85% | 0.25, 0.5 |" in md
    assert "| generative | reverse | none | 0.25 | 2 | 71% | 0.25, 0.5 |" in md


def test_recommendation_needs_every_smaller_ratio(tmp_path):
    run = make_run(tmp_path / "run")
    write_results_csv(run)
    rows = read_results_csv(run / "results.csv")
    recs = {(r["kind"], r["criterion"], r["recovery"]): r["max_ratio"]
            for r in recommend(rows, criteria=["reverse", "block_influence"], methods=["lora"], target=0.9)}
    # chance-adjusted: (38-12.5)/(40-12.5) = 0.93 at 25%, (36-12.5)/(40-12.5) = 0.85 at 50%
    assert recs[("multiple_choice", "reverse", "none")] == 0.25
    assert recs[("generate", "reverse", "none")] is None          # 0.7 at the smallest ratio
    assert recs[("generate", "reverse", "lora")] is None           # 0.85 after recovery
    assert recs[("multiple_choice", "block_influence", "lora")] == 0.25


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_report_on_empty_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no study results"):
        build_report(tmp_path)


def test_report_cli_rebuilds_the_same_report(built, tmp_path, capsys):
    from prunescope.cli import main
    run, _ = built
    first = (run / "report.md").read_text(), (run / "results.csv").read_text()
    assert main(["report", str(run)]) == 0
    assert ((run / "report.md").read_text(), (run / "results.csv").read_text()) == first
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_summary_table(built):
    from prunescope.report.summary import summary_table
    run, _ = built
    text = summary_table(run)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["cell", "classification"] and "decode" in lines[0]
    # reverse at 25%: classification (38-12.5)/(40-12.5) = 93%, generation 71%
    row = next(line for line in lines if line.startswith("reverse r=0.25 "))
    assert "93% [" in row and "71% [" in row and "generation kept less" in row
    for ratio in ("0.25", "0.5"):  # one best cell per kind and ratio
        assert sum(line.count("]*") for line in lines if f" r={ratio}" in line) == 2
    assert row.rstrip().endswith(f"{8 / 6 * 0.9:.2f}x [1.10, 1.30]")
    assert any(line.startswith("block_influence r=0.25 +lora") for line in lines)


def test_summary_speed_comes_from_each_cells_results_row():
    from prunescope.report.summary import _speed
    nan = float("nan")
    rows = [{"criterion": "width", "ratio": 0.2, "recovery": "none", "decode_speedup": 1.14,
             "decode_speedup_lo": 1.09, "decode_speedup_hi": 1.22},
            {"criterion": "reverse", "ratio": 0.2, "recovery": "none", "decode_speedup": nan,
             "decode_speedup_lo": nan, "decode_speedup_hi": nan}]
    assert _speed(rows, "width", 0.2, "none") == "1.14x [1.09, 1.22]"  # a method cell, named by its label
    assert _speed(rows, "reverse", 0.2, "none") == "-" and _speed(rows, "width", 0.2, "lora") == "-"


def _speed(cell_rounds, base_rounds):
    """A point's speed fields as frontier_points reads them from an efficiency.json with paired rounds."""
    from prunescope.report.frontier import speed_fields
    from prunescope.speed import ratio_interval
    iv = ratio_interval(cell_rounds, base_rounds, paired=True)
    return speed_fields({"speedup": {"decode": iv["ratio"], "decode_interval": iv}})


BASE_ROUNDS = [10.0, 10.2, 10.4]
FASTER = _speed([11.0, 11.2, 11.5], BASE_ROUNDS)  # every round above every base round: 1.10x [11/10.4, 11.5/10]
SLOWER = _speed([8.0, 8.5, 9.0], BASE_ROUNDS)
OVERLAP = _speed([9.0, 13.0, 14.0], BASE_ROUNDS)  # median 1.27x, yet one round below every base round


def pt(label, method, kind, r, lo, hi, speed=None, mem=0.8):
    return {"label": label, "method": method, "kind": kind, "retention": r, "lo": lo, "hi": hi,
            "memory": mem, **(speed or FASTER)}


def test_methods_are_compared_with_depth_only_when_intervals_separate():
    from prunescope.report.methods_section import compare_with_depth, methods_section

    depth = [pt("reverse r=0.2", "depth", "generate", 0.10, 0.00, 0.20),
             pt("block_influence r=0.2", "depth", "generate", 0.15, 0.05, 0.30)]
    assert compare_with_depth(pt("w", "width", "generate", 0.45, 0.31, 0.55), depth) == "more"
    assert compare_with_depth(pt("w", "width", "generate", 0.45, 0.29, 0.55), depth) == "not distinguishable"
    assert compare_with_depth(pt("w", "width", "generate", -0.3, -0.4, -0.01), depth) == "less"
    points = depth + [pt("merge r=0.2", "merge", "generate", 1.0, 1.0, 1.0, speed=OVERLAP, mem=1.0),
                      pt("width r=0.2", "width", "generate", 0.45, 0.31, 0.55, mem=0.84),
                      pt("quant-int8", "quant", "generate", 0.9, 0.8, 1.0, speed=SLOWER, mem=0.3)]
    metas = {"merge r=0.2": {"method": "merge", "merges": [], "settings": {"threshold": 0.45}}}
    findings, table = methods_section(points, metas)
    assert [row[0] for row in table] == ["merge r=0.2", "width r=0.2", "quant-int8"]  # depth rows stay in the headline
    assert "the model is unchanged" in table[0][-1] and table[1][3:5] == ["1.10x [1.06, 1.15]", "0.84x"]
    assert table[0][3] == "1.27x [0.87, 1.40]"
    assert "generative 45% [31%, 55%] (more than every depth criterion)" in findings[1]
    assert "(faster)" in findings[1] and "(not distinguishable from the base's speed on this machine)" in findings[0]
    # merge's median is above the base's and it keeps the most, but its rounds overlap the base's: it is not
    # among the faster options, so width (interval above every other faster option's) keeps the most among them
    assert any(f.startswith("Of the options that decode measurably faster than the base, width r=0.2 keeps the "
                            "most generative") and "none of them keeps all of it" in f for f in findings)
    assert "Slower than the base here: quant-int8 (decode speed measured on this machine)." in findings
    assert any(f.startswith("Decode speed not distinguishable from the base's speed on this machine: merge r=0.2")
               for f in findings)
    assert methods_section(depth, {}) == ([], [])


def test_fastest_option_is_named_only_when_its_retention_separates():
    from prunescope.report.methods_section import methods_section

    points = [pt("reverse r=0.2", "depth", "generate", 0.10, 0.00, 0.35),
              pt("width r=0.2", "width", "generate", 0.45, 0.31, 0.55)]
    findings, _ = methods_section(points, {})
    assert any("the data cannot say which keeps the most generative accuracy above chance: their intervals overlap"
               in f for f in findings)
    assert not any("keeps the most" in f and "cannot" not in f for f in findings)
    # an efficiency.json written before intervals (no rounds): no speed claim either way
    old = {"decode_speedup": 1.5, "speed_lo": None, "speed_hi": None, "speed_paired": False,
           "speed": "not distinguishable"}
    findings, table = methods_section([pt("width r=0.2", "width", "generate", 0.45, 0.31, 0.55, speed=old)], {})
    assert table[0][3] == "1.50x" and "measurably faster" not in " ".join(findings)
    assert any(f.startswith("No speed claim for width r=0.2: no interval") for f in findings)

def test_efficiency_files_without_rounds_make_no_speed_claim(tmp_path):
    """An efficiency.json written before intervals (no rounds, no decode_interval) still reads; its speedup is
    printed bare and never called faster, though the point value is far above 1."""
    run = make_run(tmp_path / "run")
    for path in run.glob("cells/*/efficiency.json"):
        data = json.loads(path.read_text())
        del data["speedup"]["decode_interval"]
        path.write_text(json.dumps(data))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "Keeping 4 of 8 layers is not distinguishable from the base's decode speed on this machine (1.80x;" in md
    table = [line for line in md.split("### Efficiency")[1].splitlines() if line.startswith("| reverse")]
    assert table and all("faster" not in line for line in table) and any("| 1.20x |" in line for line in table)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert {r["speed_verdict"] for r in rows if r["criterion"] != "none" and r["recovery"] == "none"} == {"not distinguishable"}
    assert {r["decode_speedup_lo"] for r in rows} == {""}
