"""The study's methods axis (config parsing) and the frontier's Pareto front, on hand-worked values."""
from __future__ import annotations

import json

import pytest

from prunescope.errors import UsageError
from prunescope.report.frontier import pareto
from prunescope.study.methods_axis import method_cell_name, method_label, method_specs


def test_pareto_front_by_hand():
    pts = [{"n": "a", "x": 1.0, "retention": 1.0}, {"n": "b", "x": 1.3, "retention": 0.8},
           {"n": "c", "x": 1.2, "retention": 0.5}, {"n": "d", "x": 1.3, "retention": 0.7},
           {"n": "e", "x": 2.0, "retention": 0.1}]
    assert [p["n"] for p in pareto(pts, "x", True)] == ["a", "b", "e"]  # c and d are beaten by b
    assert [p["n"] for p in pareto(pts, "x", False)] == ["a"]  # smaller x better: a beats all


def test_method_specs_expand_and_validate():
    specs = method_specs(["merge", {"method": "quant"}, {"method": "width", "ratio": 0.3, "settings": {"heads": 0.5}}],
                         [0.1, 0.2])
    assert [(s["method"], s["ratio"]) for s in specs] == [("merge", 0.1), ("merge", 0.2), ("quant", None),
                                                          ("width", 0.3)]
    assert [method_cell_name(s) for s in specs][2:] == ["method-quant-int8", "method-width-r0.3"]
    assert method_label(method_specs(["speculative"], [0.2])[0]) == "speculative:block_influence"
    with pytest.raises(UsageError, match="did you mean 'merge'"):
        method_specs(["merg"], [0.2])
    with pytest.raises(UsageError, match="has no setting 'bits'"):
        method_specs([{"method": "quant", "settings": {"bits": 4}}], [0.2])


def test_study_with_methods_axis_writes_method_rows_and_the_frontier(tiny_model_dir, tmp_path):
    import torch

    from prunescope.report import build_report
    from prunescope.report.tables import read_results_csv
    from prunescope.study import run_study
    from prunescope.study.config import StudyConfig, from_mapping

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = from_mapping(StudyConfig, dict(
            name="tiny-methods", model=str(tiny_model_dir), dtype="float32", device="cpu",
            tasks=["arith_add_1d_gen", "arith_add_1d_mc"], limit=3, criteria=["reverse"], ratios=[0.3],
            scoring={"calib": ["The quick brown fox jumps over the lazy dog. " * 4] * 2},
            efficiency={"prompt_tokens": 8, "new_tokens": 4, "repeats": 1, "warmup": 0},
            ablation={"enabled": False}, recovery={"methods": []},
            methods=["merge", {"method": "width"}, {"method": "quant"}, {"method": "speculative"},
                     {"method": "depth", "settings": {"criterion": "reverse"}}],
            out=str(tmp_path / "run")))
        run = run_study(cfg)
        build_report(run)
    finally:
        torch.set_num_threads(threads)
    rows = read_results_csv(run / "results.csv")
    methods = {r["method"] for r in rows}
    assert methods == {"none", "depth", "merge", "width", "quant", "speculative"}
    spec = [r for r in rows if r["method"] == "speculative"]
    base = {r["task"]: r["accuracy"] for r in rows if r["method"] == "none"}
    assert all(r["accuracy"] == base[r["task"]] for r in spec)  # lossless: the baseline's numbers
    # a merge cell reuses the baseline's numbers only when LaCo accepted no merge (the weights are unchanged)
    merge_meta = json.loads((run / "cells" / "method-merge-r0.3" / "prunescope.json").read_text())
    merge_metrics = json.loads((run / "cells" / "method-merge-r0.3" / "metrics.json").read_text())
    assert ("copied_from" in merge_metrics) == (not merge_meta["merges"])
    assert "copied_from" not in json.loads((run / "cells" / "method-width-r0.3" / "metrics.json").read_text())
    for name in ("method-merge-r0.3", "method-width-r0.3", "method-quant-int8", "method-speculative-r0.3"):
        eff = json.loads((run / "cells" / name / "efficiency.json").read_text())
        assert eff["speedup"]["decode"] > 0
        assert eff["speedup"]["decode_interval"]["paired"]  # the base timed alongside (or plain vs assisted)
    assert (run / "figures" / "frontier_methods.png").is_file()
    # a method whose criterion the study already scored takes that removal; another scores on the study's calibration
    depth_meta = json.loads((run / "cells" / "method-depth-r0.3" / "prunescope.json").read_text())
    reverse_meta = json.loads((run / "cells" / "reverse-r0.3" / "prunescope.json").read_text())
    assert depth_meta["scores_from"] == "scores/reverse.json"
    assert depth_meta["removed_layers"] == reverse_meta["removed_layers"]
    spec_meta = json.loads((run / "cells" / "method-speculative-r0.3" / "prunescope.json").read_text())
    assert spec_meta["scores_from"] == "computed" and len(spec_meta["draft_removed_layers"]) == len(reverse_meta["removed_layers"])


def test_only_unchanged_models_reuse_the_baseline():
    from prunescope.study.methods_axis import same_outputs_as_base

    assert same_outputs_as_base("speculative", {}) and same_outputs_as_base("merge", {"merges": []})
    assert same_outputs_as_base("merge", {"merges": [{"into": 3, "merged": [4]}]}) is None
    assert same_outputs_as_base("width", {}) is None and same_outputs_as_base("quant", {"merges": []}) is None


def test_method_notes_say_what_the_record_says():
    from prunescope.report.methods_section import _notes
    merged = {"method": "merge", "settings": {"merge_layers": 2, "threshold": 0.45},
              "merges": [{"into": 27, "merged": [28]}, {"into": 25, "merged": [26, 27]}]}
    assert _notes(merged) == "LaCo merged layers 28 into 27; 26 27 into 25 (merge_layers=2)"
    assert "unchanged" in _notes({**merged, "merges": []}) and "(0.45)" in _notes({**merged, "merges": []})
    int4 = {"method": "quant", "settings": {"scheme": "int4"}, "compute_dtype": "bfloat16"}
    assert _notes(int4) == "computes in bfloat16, the 4-bit kernels' dtype"
    assert _notes({"method": "quant", "settings": {"scheme": "int8"}, "compute_dtype": "float32"}) == ""
    draft = {"method": "speculative", "drafting": {"acceptance_rate": 0.4516}}
    assert _notes(draft).endswith("only speed changes; 45% of the draft's tokens accepted")
    assert _notes({"method": "speculative"}).endswith("only speed changes")
