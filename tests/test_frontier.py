"""The study's methods axis (config parsing) and the frontier's Pareto front, on hand-worked values."""
from __future__ import annotations

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
