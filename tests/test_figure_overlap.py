"""Markers that share one measurement stay visible: criteria at one ratio are drawn side by side in the frontier
figure, and coincident points of the methods frontier become one marker with a joined label."""
import math

import pytest

from prunescope.report import figures
from prunescope.report.frontier import merge_coincident
from test_report import make_run


@pytest.fixture
def captured(monkeypatch):
    """The figures the report functions draw, kept open instead of written."""
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    return figs


def _marker_positions(ax):
    """Display coordinates of every marker drawn, per marker style."""
    out = {}
    for line in ax.get_lines():
        marker = line.get_marker()
        if marker in (None, "None", "", " ", "_", "|") or not len(line.get_xydata()):  # not error-bar caps
            continue
        for x, y in line.get_transform().transform(line.get_xydata()):
            out.setdefault(marker, []).append((round(float(x), 1), round(float(y), 1)))
    return out


def test_criteria_sharing_a_measurement_do_not_stack(tmp_path, captured):
    from prunescope.io import read_json
    from prunescope.report.build import load_artifacts
    from prunescope.report.tables import write_results_csv

    # make_run: both criteria keep the same generative accuracy at each ratio and share each ratio's speed
    run = make_run(tmp_path / "run")
    write_results_csv(run)
    art = load_artifacts(run)
    efficiency = {key: c["efficiency"] for key, c in art["cells"].items() if c["efficiency"]}
    assert read_json(run / "cells/reverse-r0.5/efficiency.json") == read_json(run / "cells/block_influence-r0.5/efficiency.json")
    figures.frontier_figure(art["rows"], efficiency, criteria=["reverse", "block_influence"], methods=["lora"],
                            target=0.9, path=tmp_path / "f.png")
    ax = captured[0].axes[0]
    positions = _marker_positions(ax)
    first, second = set(positions[figures.MARKERS[0]]), set(positions[figures.MARKERS[1]])
    assert first and second and not first & second  # no marker of one criterion hidden under the other's
    # ... and they are beside each other: generative retention is the same for both criteria at each ratio, so
    # those markers sit at one height, one dodge apart (6 points at the figure's dpi)
    step = figures.DODGE_POINTS * captured[0].dpi / 72
    side_by_side = [(a, b) for a in first for b in second if a[1] == b[1] and abs(b[0] - a[0] - step) < 0.5]
    assert len(side_by_side) >= 2
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("one speed measurement" in t for t in texts)


def test_coincident_points_merge_into_one_labelled_marker():
    pts = [{"label": "base", "method": "base", "retention": 1.0, "lo": 1.0, "hi": 1.0, "decode_speedup": 1.0,
            "memory": 1.0},
           {"label": "speculative r=0.2", "method": "speculative", "retention": 1.0, "lo": 1.0, "hi": 1.0,
            "decode_speedup": 1.0004, "memory": 1.0},
           {"label": "merge r=0.2", "method": "merge", "retention": 1.0, "lo": 1.0, "hi": 1.0,
            "decode_speedup": 1.0, "memory": 1.0},
           {"label": "width r=0.2", "method": "width", "retention": 0.5, "lo": 0.3, "hi": 0.7,
            "decode_speedup": 1.3, "memory": 0.8}]
    merged = merge_coincident(pts, "decode_speedup")
    assert [p["label"] for p in merged] == ["base = speculative r=0.2 = merge r=0.2", "width r=0.2"]
    assert merged[0]["method"] == "base"
    nan = float("nan")
    unbounded = [{**pts[3], "lo": nan, "hi": nan}, {**pts[3], "label": "w2", "lo": nan, "hi": nan}]
    assert [p["label"] for p in merge_coincident(unbounded, "memory")] == ["width r=0.2 = w2"]
    assert math.isnan(merge_coincident(unbounded, "memory")[0]["lo"])


def test_methods_frontier_draws_one_marker_per_place(tmp_path, monkeypatch):
    import matplotlib.figure

    from prunescope.report.frontier import plot_frontier
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: drawn.append(self))
    pts = [{"label": "speculative r=0.2", "method": "speculative", "kind": "generate", "retention": 1.0, "lo": 1.0,
            "hi": 1.0, "decode_speedup": 1.0, "memory": 1.0},
           {"label": "width r=0.2", "method": "width", "kind": "generate", "retention": 0.5, "lo": 0.3, "hi": 0.7,
            "decode_speedup": 1.3, "memory": 0.8}]
    plot_frontier(pts, tmp_path / "m.png")
    ax = drawn[0].axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == ["base = speculative r=0.2", "width r=0.2"]
    at_one = [xy for xs in _marker_positions(ax).values() for xy in xs
              if xy == tuple(round(float(v), 1) for v in ax.transData.transform((1.0, 1.0)))]
    assert len(at_one) == 1


def test_frontier_labels_do_not_overlap(tmp_path, monkeypatch):
    """Markers close together (a long label left of a short one, several at one speed) get labels whose boxes
    are disjoint and inside the axes."""
    import matplotlib.figure

    from prunescope.report.frontier import plot_frontier
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: drawn.append(self))
    near = [("speculative:block_influence r=0.2", 0.53, 1.0), ("quant-int8", 0.82, 0.95), ("width r=0.2", 1.2, 0.45),
            ("block_influence r=0.2", 1.17, 0.13), ("reverse r=0.2", 1.17, 0.06), ("merge r=0.2", 1.19, -0.06),
            ("quant-int4", 2.7, 0.75)]
    pts = [{"label": label, "method": label.split(":")[0].split(" ")[0], "kind": "generate", "retention": y,
            "lo": y - 0.05, "hi": y + 0.05, "decode_speedup": x, "memory": 0.84} for label, x, y in near]
    plot_frontier(pts, tmp_path / "m.png")
    fig = drawn[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == len({t.get_text() for t in ax.texts})
        inside = ax.get_window_extent(renderer)
        for i, a in enumerate(boxes):
            assert inside.x0 <= a.x0 and a.x1 <= inside.x1, ax.texts[i].get_text()
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (ax.texts[i].get_text(), [t.get_text() for t in ax.texts])


def test_frontier_axes_show_every_cell(tmp_path, captured):
    """The dodged markers are drawn with an offset transform, which matplotlib's autoscaling ignores: the
    axes must still reach every cell's retention interval and speedup (a cut far below the target, too)."""
    from prunescope.report.build import load_artifacts
    from prunescope.report.tables import aggregate, write_results_csv

    run = make_run(tmp_path / "run")
    write_results_csv(run)
    art = load_artifacts(run)
    efficiency = {key: c["efficiency"] for key, c in art["cells"].items() if c["efficiency"]}
    figures.frontier_figure(art["rows"], efficiency, criteria=["reverse", "block_influence"], methods=["lora"],
                            target=0.9, path=tmp_path / "f.png")
    ax = captured[0].axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    cells = [(key, a) for key, a in aggregate(art["rows"]).items() if key[2] == "none" and (key[0], key[1]) in efficiency]
    assert cells
    for key, a in cells:
        speed = efficiency[(key[0], key[1])]["speedup"]["decode"]
        assert x0 <= speed <= x1, (key, speed, (x0, x1))
        assert y0 <= a["lo"] and a["hi"] <= y1, (key, a, (y0, y1))
    assert min(a["retention"] for _, a in cells) < 0.9  # the check is not vacuous: a cell below the target
