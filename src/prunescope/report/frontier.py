"""The compression frontier: chance-adjusted retention against measured decode speedup and memory, one marker
per method and setting (depth cells included), with 95% retention intervals, the speedup's rank interval
over timed rounds (``prunescope.speed``, at least 90%: each side 5%) and the Pareto front drawn.

Read from a run folder only: retention from results.csv's aggregates, speed and memory from each cell's
``efficiency.json`` (relative to ``baseline/efficiency.json``).
"""
from __future__ import annotations

from pathlib import Path

from prunescope.io import read_json

PANELS = [("decode_speedup", "decode speedup over base (x)", True), ("memory", "weight memory / base", False)]


def frontier_points(run_dir: str | Path) -> list[dict]:
    """One point per (cell, kind) without recovery: label, kind, retention with lo/hi, decode speedup, memory."""
    from prunescope.report.tables import aggregate, collect_results

    run_dir = Path(run_dir)
    base_eff = run_dir / "baseline" / "efficiency.json"
    if not base_eff.is_file():
        return []
    base_w = read_json(base_eff)["memory"]["weights_bytes"]
    agg = aggregate(collect_results(run_dir))
    points = []
    for meta_path in sorted((run_dir / "cells").glob("*/prunescope.json")):
        cell = meta_path.parent
        if not (cell / "efficiency.json").is_file():
            continue
        meta, eff = read_json(meta_path), read_json(cell / "efficiency.json")
        for (crit, ratio, recovery, kind), a in agg.items():
            if crit != meta["criterion"] or ratio != float(meta["ratio"]) or recovery != "none":
                continue
            points.append({"label": f"{crit} r={ratio:g}" if ratio else crit, "method": meta.get("method", "depth"),
                           "kind": kind, "retention": a["retention"], "lo": a["lo"], "hi": a["hi"],
                           **speed_fields(eff),
                           "memory": eff["memory"]["weights_bytes"] / base_w})
    return points


def speed_fields(eff: dict) -> dict:
    """A cell's decode speedup with its interval's ends and the verdict ``prunescope.speed`` allows (an
    efficiency.json without rounds or a paired base: no interval, no claim)."""
    from prunescope.speed import decode_interval, speed_verdict
    iv = decode_interval(eff)
    return {"decode_speedup": eff["speedup"]["decode"], "speed_lo": (iv or {}).get("lo"),
            "speed_hi": (iv or {}).get("hi"), "speed_level": (iv or {}).get("level"),
            "speed_paired": bool((iv or {}).get("paired")), "speed": speed_verdict(iv)}


def pareto(points: list[dict], x: str, larger_x_better: bool) -> list[dict]:
    """Points no other point beats on both x and retention, sorted by x."""
    sign = 1 if larger_x_better else -1
    front = [p for p in points if not any(
        sign * q[x] >= sign * p[x] and q["retention"] >= p["retention"]
        and (sign * q[x] > sign * p[x] or q["retention"] > p["retention"]) for q in points)]
    return sorted(front, key=lambda p: p[x])


def merge_coincident(points: list[dict], x: str) -> list[dict]:
    """Points at the same place (x and retention with its interval, to 3 decimals) as one point whose label
    joins theirs with " = ", e.g. the base and a lossless speculative cell both at 1.0x, 100%."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        key = tuple(round(float(v), 3) if v == v else None for v in (p[x], p["retention"], p["lo"], p["hi"]))
        groups.setdefault(key, []).append(p)
    out = []
    for group in groups.values():
        first = next((p for p in group if p["method"] == "base"), group[0])
        out.append({**first, "label": " = ".join([first["label"]] + [p["label"] for p in group if p is not first])})
    return out


# Where a marker's label may go, in points from the marker, tried in order: right above, right below, left
# above, left below, then further out; the first that overlaps no label already placed is used.
LABEL_SPOTS = [(4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right"), (4, 12, "left"),
               (4, -19, "left"), (-4, 12, "right"), (-4, -19, "right"), (4, 21, "left"), (4, -28, "left")]


def place_labels(ax, labelled: list[tuple[str, float, float]]) -> list:
    """Annotate each ``(label, x, y)`` at the first of ``LABEL_SPOTS`` whose text box stays inside the axes and
    overlaps no label placed before (else the first spot); returns the text objects."""
    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):  # a figure made outside pyplot's Agg backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    def annotate(label, x, y, spot):
        dx, dy, ha = spot
        text = ax.annotate(label, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=ha)
        return text, text.get_window_extent(renderer)

    placed, texts = [], []
    for label, x, y in labelled:
        for spot in LABEL_SPOTS:
            text, box = annotate(label, x, y, spot)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:
            text, box = annotate(label, x, y, LABEL_SPOTS[0])
        placed.append(box)
        texts.append(text)
    return texts


def plot_frontier(points: list[dict], path: str | Path) -> Path | None:
    """Two rows (classification, generation) by two panels (speedup, memory); base at (1, 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunescope.report.tables import KINDS, kind_label

    kinds = [k for k in KINDS if any(p["kind"] == k for p in points)]
    if not kinds:
        return None
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 3.6 * len(kinds)), squeeze=False)
    methods = sorted({p["method"] for p in points})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    labels: dict = {}  # axes -> (label, x, y) of its markers
    for r, kind in enumerate(kinds):
        pts = [p for p in points if p["kind"] == kind] + [{"label": "base", "method": "base", "kind": kind,
                                                           "retention": 1.0, "lo": 1.0, "hi": 1.0,
                                                           "decode_speedup": 1.0, "memory": 1.0}]
        for c, (x, xlabel, larger) in enumerate(PANELS):
            ax = axes[r][c]
            labelled = labels.setdefault(ax, [])
            for p in merge_coincident(pts, x):
                color = "black" if p["method"] == "base" else colors[p["method"]]
                lo = p["lo"] if p["lo"] == p["lo"] else p["retention"]
                hi = p["hi"] if p["hi"] == p["hi"] else p["retention"]
                xerr = None  # the speedup's rank interval over timed rounds, where the cell has one
                if x == "decode_speedup" and p.get("speed_lo") is not None:
                    xerr = [[max(0.0, p[x] - p["speed_lo"])], [max(0.0, p["speed_hi"] - p[x])]]
                ax.errorbar(p[x], p["retention"], yerr=[[p["retention"] - lo], [hi - p["retention"]]], xerr=xerr,
                            fmt="o", color=color, capsize=3)
                labelled.append((p["label"], p[x], p["retention"]))
            front = pareto(pts, x, larger)
            ax.plot([p[x] for p in front], [p["retention"] for p in front], "--", color="grey", lw=1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{kind_label(kind)} retention (chance-adj.)")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.grid(alpha=0.3)
            ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost markers
    fig.suptitle("Compression frontier: retention vs measured speed and memory\n(dashed: Pareto front; "
                 "'a = b': one marker for settings measured the same)", fontsize=10)
    fig.tight_layout()
    for ax, labelled in labels.items():  # last, once the layout has fixed where the axes are
        place_labels(ax, labelled)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
