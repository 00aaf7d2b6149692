"""The report is built from a run folder's files alone: synthetic artifacts in, report + figures out."""
import base64
import csv
import json
import math

import pytest

from prunescope.errors import UsageError
from prunescope.report import build_report, collect_results
from prunescope.report.findings import recommend
from prunescope.report.tables import read_results_csv, spearman, write_results_csv

L = 8
TASKS = {"add_mc": ("multiple_choice", 0.25, 0.80), "add_gen": ("generate", 0.0, 0.60),
         "br_gen": ("generate", 0.0, 0.90)}


def _metrics(scale_mc: float, scale_gen: float, n: int = 50) -> dict:
    tasks = {}
    for name, (kind, chance, base) in TASKS.items():
        acc = base * (scale_mc if kind == "multiple_choice" else scale_gen)
        half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-4) / n)
        tasks[name] = {"kind": kind, "n": n, "accuracy": acc, "ci95": [max(0, acc - half), min(1, acc + half)],
                       "chance": chance, "normalized": acc}
    return {"model": "tiny", "seed": 0, "tasks": tasks}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(root, *, with_optional: bool = True):
    """A run folder as the study writes it, with made-up numbers that decline with the ratio."""
    criteria, ratios = ["reverse", "block_influence"], [0.25, 0.5]
    config = {"name": "synthetic", "model": "tiny", "tasks": list(TASKS), "criteria": criteria, "ratios": ratios,
              "limit": 50, "seed": 0, "recovery": {"methods": ["lora"]}, "report": {"retention_target": 0.9}}
    _write(root / "study.json", {"name": "synthetic", "config": config, "num_layers": L, "started": "t0",
                                 "finished": "t1", "seeds": {"study": 0}, "versions": {"prunescope": "0.1.0"}})
    _write(root / "baseline/metrics.json", _metrics(1.0, 1.0))
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
            _write(cell / "metrics.json", _metrics(1 - 0.2 * ratio - 0.05 * ci, 1 - 1.2 * ratio))
            if with_optional:
                speed = {"decode": L / (L - k) * 0.9, "prefill": L / (L - k), "ideal": L / (L - k) * 0.95,
                         "layer_ratio": L / (L - k), "parameters": 1.2, "of_ideal": 0.9}
                _write(cell / "efficiency.json", {**eff, "num_layers": L - k, "speedup": speed})
            if ratio == 0.25:
                _write(cell / "recovery-lora/metrics.json", _metrics(0.99, 0.85))
    if with_optional:
        ablation = {"limit": 10, "num_layers": L, "layers": list(range(L)), "tasks": {
            t: {"kind": k, "base_accuracy": b, "accuracy": [b - 0.05 * (i % 3) for i in range(L)],
                "drop": [0.05 * (i % 3) for i in range(L)]} for t, (k, _, b) in TASKS.items()}}
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
    assert header == ["criterion", "ratio", "layers_removed", "removed", "recovery", "task", "kind", "n", "accuracy",
                      "ci_lo", "ci_hi", "chance", "retention"]
    row = next(r for r in rows if r["criterion"] == "reverse" and r["ratio"] == 0.5 and r["task"] == "add_gen"
               and r["recovery"] == "none")
    assert row["layers_removed"] == 4 and row["removed"] == [4, 5, 6, 7]
    assert row["retention"] == pytest.approx((0.6 * (1 - 0.6)) / 0.6)
    assert {r["recovery"] for r in rows} == {"none", "lora"}
    assert collect_results(run)[0]["criterion"] == "none"


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
    # findings in words, computed from the numbers: 25% removed keeps 0.98 (reverse) / 0.93 (bi) of the MC task
    assert "Removing 25% of layers (2 of 8) keeps 92% of classification accuracy and 70% of generative" in md
    assert "lora recovery brings retention from classification 95% and generative 70% to 99% and 85%" in md
    assert "no recovered cell meets it either" in md
    assert "Recommended maximum pruning ratio" in md and "none qualifies" in md
    assert "Spearman" in md and "Provenance" in md
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
    # the recommendation at a 50% target, from make_run's numbers: classification retention is
    # 1 - 0.2 * ratio (reverse), 0.9 at ratio 0.5; generative is 1 - 1.2 * ratio: 0.7 at 0.25, 0.4 at 0.5
    assert "retention >= 50%" in md
    assert "| classification | reverse | none | 0.5 | 4 | 90% | 0.25, 0.5 |" in md
    assert "| generative | reverse | none | 0.25 | 2 | 70% | 0.25, 0.5 |" in md


def test_recommendation_needs_every_smaller_ratio(tmp_path):
    run = make_run(tmp_path / "run")
    write_results_csv(run)
    rows = read_results_csv(run / "results.csv")
    recs = {(r["kind"], r["criterion"], r["recovery"]): r["max_ratio"]
            for r in recommend(rows, criteria=["reverse", "block_influence"], methods=["lora"], target=0.9)}
    assert recs[("multiple_choice", "reverse", "none")] == 0.5    # 0.95 and 0.9 retention
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
