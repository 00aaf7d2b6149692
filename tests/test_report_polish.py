"""Report details: zeros without a sign, no column that says the same thing in every row, provenance that counts
every attempt of a resumed run."""
import json
import re
import time as _time

import pytest

from prunescope.report import build_report
from prunescope.report.tables import fmt_num, fmt_pct
from test_report import L, make_run


@pytest.mark.parametrize("x, spec, expected", [(-0.0, ".1f", "0.0"), (-0.004, ".0%", "0%"), (-0.04, ".1f", "0.0"),
                                               (0.0, "+.0f", "0"), (-0.4, "+.0f", "0"), (-0.6, "+.0f", "-1"),
                                               (0.6, "+.0f", "+1"), (-0.05, ".1f", "-0.1"), (-10.0, ".0f", "-10")])
def test_zero_has_no_sign(x, spec, expected):
    assert fmt_num(x, spec) == expected


def test_percentages_keep_real_signs():
    assert fmt_pct(-0.004) == "0%" and fmt_pct(-0.02) == "-2%" and fmt_pct(None) == "-"


@pytest.fixture(scope="module")
def report_md(tmp_path_factory):
    """A synthetic run whose ablation drops round to zero from below and whose two criteria share no layer."""
    run = make_run(tmp_path_factory.mktemp("polish") / "run")
    ab = json.loads((run / "ablation/ablation.json").read_text())
    for t in ab["tasks"].values():  # drops that round to zero from below, as a tiny negative mean does
        t["drop"] = [-0.001 * (i % 2) for i in range(L)]
    ab["kinds"]["multiple_choice"]["drop"] = [-0.002] * L
    (run / "ablation/ablation.json").write_text(json.dumps(ab))
    for crit, order in (("reverse", [7, 6, 5, 4, 3, 2, 1, 0]), ("block_influence", [0, 1, 2, 3, 4, 5, 6, 7])):
        path = run / f"scores/{crit}.json"
        data = json.loads(path.read_text())
        data["order"] = order
        path.write_text(json.dumps(data))
        for ratio in (0.25, 0.5):
            meta = run / f"cells/{crit}-r{ratio:g}/prunescope.json"
            m = json.loads(meta.read_text())
            m["removed_layers"] = sorted(order[:int(ratio * L)])
            meta.write_text(json.dumps(m))
    build_report(run)
    return (run / "report.md").read_text()


def test_report_has_no_signed_zero(report_md):
    assert not re.search(r"(?<![\w.])[-+]0(\.0+)?(?![\d.])%?", report_md), \
        re.findall(r".{30}[-+]0(?:\.0+)?(?![\d.]).{10}", report_md)
    assert "| 0 |" in report_md  # the drops are there, unsigned


def test_constant_agreement_column_becomes_a_sentence(report_md):
    start = report_md.index("| criterion | first ")
    table = report_md[start:].split("\n\n")[0].splitlines()
    assert "removed by every criterion?" not in table[0] and "no" not in " ".join(table[2:]).split()
    assert "No layer is among the first 4 of every criterion." in report_md


def test_agreement_column_stays_when_it_varies():
    from prunescope.report.build import removal_table
    headers, rows, caption = removal_table({"a": [7, 6, 5, 4], "b": [3, 4, 2, 5]}, ["a", "b"], 4)
    assert headers[-1] == "removed by every criterion?" and not caption
    assert rows == [["a", "7 6 5 4", "no no yes yes"], ["b", "3 4 2 5", "no yes no yes"]]
    headers, rows, caption = removal_table({"a": [1, 2], "b": [2, 1]}, ["a", "b"], 2)
    assert len(headers) == 2 and caption == "Every criterion removes the same 2 layers."


def test_provenance_sums_every_attempt(tiny_model_dir, tmp_path, monkeypatch):
    """On a clock where each evaluation takes 100 s, a run interrupted after two evaluations and resumed reports
    the compute of both attempts, and says it was resumed."""
    import prunescope.study.runner as runner
    from prunescope.study import run_study
    from test_study import Counting, tiny_config

    class Clock:
        offset = 0.0

        def time(self):
            return _time.time() + self.offset

    clock = Clock()
    monkeypatch.setattr(runner, "time", clock)

    class Slow(Counting):
        def stages(self):
            stages = super().stages()
            evaluate = stages.evaluate

            def slow(*args, **kwargs):
                clock.offset += 100.0
                return evaluate(*args, **kwargs)
            stages.evaluate = slow
            return stages

    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, criteria=["reverse"], ratios=[0.5], ablation={"enabled": False},
                         tasks=["arith_add_1d_mc"], limit=1,
                         recovery={"methods": []}, efficiency={"enabled": False})
    with pytest.raises(KeyboardInterrupt):  # baseline evaluated, the cell's evaluation interrupted
        run_study(config, stages=Slow(fail="evaluate", after=1).stages())
    run_study(config, stages=Slow().stages())
    info = json.loads((out / "study.json").read_text())
    # attempt 1: the baseline (100 s; the interrupted call's 100 s is lost with its step); attempt 2: the cell
    assert 200 <= info["seconds"] < 300
    md = (out / "report.md").read_text()
    assert "s of compute, summed over its 2 attempts)" in md and "interrupted and resumed 1 time(s)" in md
