"""The report's figures (matplotlib, Agg, PNG). Colours: one per task kind everywhere
(classification blue, generative vermillion); one per criterion where criteria are compared."""
from __future__ import annotations

import math
from pathlib import Path

from prunescope.report.tables import KINDS, aggregate, baseline_rows, fmt_num, kind_label

KIND_COLOR = {"multiple_choice": "#0072B2", "generate": "#D55E00"}
CRITERION_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 150
DODGE_POINTS = 6.0  # sideways offset between criteria sharing one measurement, in points


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI})
    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (temp file + rename, like prunescope.io) and close it."""
    import os
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    from prunescope.io import _umask_mode
    os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes owner-only files; a report is for sharing
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    os.replace(tmp, path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def retention_figure(rows: list[dict], *, criteria: list[str], methods: list[str], num_layers: int,
                     target: float, path: Path) -> Path:
    """Chance-adjusted retention vs fraction of layers removed: one panel per criterion; per kind a thick
    line (mean over the kind's tasks) with its paired-bootstrap 95% band and thin per-task lines;
    recovered cells dashed with open markers. 0 is chance level, 1 the base model."""
    plt = _plt()
    agg = aggregate(rows)
    base = baseline_rows(rows)
    ncols = min(3, len(criteria))
    nrows = math.ceil(len(criteria) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    ymax, ymin = 1.1, -0.05
    for ax, crit in zip(axes.flat, criteria):
        for kind in kinds:
            color = KIND_COLOR.get(kind, "gray")
            tasks = [t for t, b in base.items() if b["kind"] == kind and b.get("retention_adj") is not None]
            for task in tasks:  # thin per-task lines
                pts = sorted((r["layers_removed"] / num_layers, r["retention_adj"]) for r in rows
                             if r["criterion"] == crit and r["task"] == task and r["recovery"] == "none"
                             and r.get("retention_adj") is not None)
                if pts:
                    xs, ys = zip(*[(0.0, 1.0), *pts])
                    ax.plot(xs, ys, color=color, lw=0.8, alpha=0.35)
                    ymax = max(ymax, *ys)
            keys = sorted((k for k in agg if k[0] == crit and k[2] == "none" and k[3] == kind), key=lambda k: k[1])
            if keys:
                xs = [0.0] + [agg[k]["layers_removed"] / num_layers for k in keys]
                ys = [1.0] + [agg[k]["retention"] for k in keys]
                lo = [1.0] + [agg[k]["lo"] for k in keys]
                hi = [1.0] + [agg[k]["hi"] for k in keys]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
                ax.plot(xs, ys, color=color, lw=2.4, marker="o", ms=5, label=f"{kind_label(kind)} (pruned)")
                ymin = min(ymin, *[v for v in lo if v == v])
            for mi, method in enumerate(methods):
                rkeys = sorted((k for k in agg if k[0] == crit and k[2] == method and k[3] == kind),
                               key=lambda k: k[1])
                if not rkeys:
                    continue
                xs = [agg[k]["layers_removed"] / num_layers for k in rkeys]
                ys = [agg[k]["retention"] for k in rkeys]
                err = [[max(0.0, y - agg[k]["lo"]) for y, k in zip(ys, rkeys)],
                       [max(0.0, agg[k]["hi"] - y) for y, k in zip(ys, rkeys)]]
                ax.errorbar(xs, ys, yerr=err, color=color, ls="--", lw=1.8, marker=MARKERS[(mi + 1) % len(MARKERS)],
                            ms=7, mfc="white", mew=1.8, capsize=3, label=f"{kind_label(kind)} + {method} recovery")
                for x, k in zip(xs, rkeys):  # connect each recovered cell to its pruned value
                    pruned = agg.get((crit, k[1], "none", kind))
                    if pruned:
                        ax.plot([x, x], [pruned["retention"], agg[k]["retention"]], color=color, lw=0.8, ls=":")
                ymax = max(ymax, *ys)
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.axhline(0.0, color="0.4", lw=0.9, ls=":")
        ax.axhline(target, color="0.4", lw=0.8, ls="--")
        ax.text(0.0, target, f" target {target:.0%}", va="bottom", ha="left", fontsize=8, color="0.3")
        ax.set_title(crit)
        ax.set_xlabel("fraction of layers removed")
        ax.grid(alpha=0.25)
        ax.xaxis.set_major_formatter(_percent())
        ax.yaxis.set_major_formatter(_percent())
    for ax in axes[:, 0]:
        ax.set_ylabel("chance-adjusted retention")
    for ax in list(axes.flat)[len(criteria):]:
        ax.axis("off")
    axes.flat[0].set_ylim(max(-0.6, ymin - 0.05), min(1.6, ymax + 0.05))
    handles, labels = _legend_entries(axes)
    handles.append(plt.Line2D([], [], color="0.5", lw=0.8, alpha=0.6))
    labels.append("single task")
    handles.append(plt.Line2D([], [], color="0.5", lw=0.9, ls=":"))
    labels.append("chance level (0)")
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(labels) / 4)))
    fig.suptitle("Accuracy above chance kept after removing layers (paired bootstrap 95% bands)", y=1.01)
    fig.tight_layout()
    return _save(fig, path)


def _legend_entries(axes):
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    return list(seen.values()), list(seen.keys())


def _percent():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda v, _: f"{v:.0%}")


def importance_figure(profiles: dict[str, list[float]], removal: dict[str, list[int]], *, k: int, path: Path) -> Path:
    """Top: each criterion's layer importance, min-max normalised (0 = least important). Bottom: the
    ``k`` layers each criterion removes first, numbered by removal step; shaded columns are layers some
    criteria remove and others keep."""
    plt = _plt()
    crits = list(profiles)
    total = len(next(iter(profiles.values())))
    fig, (top, grid) = plt.subplots(2, 1, figsize=(max(7.0, 0.28 * total + 2.5), 3.2 + 0.38 * len(crits)),
                                    gridspec_kw={"height_ratios": [2.2, 0.25 + 0.3 * len(crits)]}, sharex=True)
    disagree = _disagreement(removal, total)
    for layer in disagree:
        for ax in (top, grid):
            ax.axvspan(layer - 0.5, layer + 0.5, color="#F0E442", alpha=0.35, lw=0)
    for i, crit in enumerate(crits):
        s = profiles[crit]
        lo, hi = min(s), max(s)
        norm = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in s]
        top.plot(range(total), norm, marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.5,
                 color=CRITERION_COLORS[i % len(CRITERION_COLORS)], label=crit)
    top.set_ylabel("importance\n(min-max normalised)")
    top.set_title(f"Layer importance by criterion (shaded: criteria disagree on the first {k} removals)", fontsize=10)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.grid(alpha=0.25)
    grid.set_ylim(len(crits) - 0.5, -0.5)
    grid.set_yticks(range(len(crits)), crits)
    for i, crit in enumerate(crits):
        color = CRITERION_COLORS[i % len(CRITERION_COLORS)]
        for step, layer in enumerate(removal.get(crit, [])[:k], 1):
            grid.add_patch(plt.Rectangle((layer - 0.45, i - 0.4), 0.9, 0.8, color=color, alpha=0.85))
            grid.text(layer, i, str(step), ha="center", va="center", fontsize=7, color="white")
    grid.set_xlabel("layer (0-based)")
    grid.set_xlim(-0.6, total - 0.4)
    step = 1 if total <= 32 else 2 if total <= 64 else 4
    grid.set_xticks(range(0, total, step))
    grid.tick_params(axis="y", length=0)
    for side in ("left", "bottom"):
        grid.spines[side].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _disagreement(removal: dict[str, list[int]], total: int) -> list[int]:
    sets = [set(v) for v in removal.values()]
    if len(sets) < 2:
        return []
    return sorted(set.union(*sets) - set.intersection(*sets))


def ablation_figure(ablation: dict, *, path: Path) -> Path:
    """Heatmap layer x task of the accuracy drop (points) when that one layer is skipped; tasks are grouped
    by kind, with the kind colour on the column labels."""
    import numpy as np
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm
    tasks = sorted(ablation["tasks"], key=lambda t: (KINDS.index(ablation["tasks"][t]["kind"])
                                                      if ablation["tasks"][t]["kind"] in KINDS else 9, t))
    layers = ablation["layers"]
    data = np.array([[100 * ablation["tasks"][t]["drop"][i] for t in tasks] for i in range(len(layers))])
    vmax = max(1.0, float(np.nanmax(np.abs(data))))
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * len(tasks), 1.4 + 0.24 * len(layers)))
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax), interpolation="nearest")
    if data.size <= 600:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                ax.text(j, i, fmt_num(v, ".0f"), ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * vmax else "black")
    ax.set_xticks(range(len(tasks)), [f"{t}\n{kind_label(ablation['tasks'][t]['kind'])}" for t in tasks],
                  rotation=0 if len(tasks) <= 6 else 30, ha="center" if len(tasks) <= 6 else "right", fontsize=8)
    for label, t in zip(ax.get_xticklabels(), tasks):
        label.set_color(KIND_COLOR.get(ablation["tasks"][t]["kind"], "black"))
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_ylabel("layer skipped (0-based)")
    bar = fig.colorbar(im, ax=ax, fraction=0.06, pad=0.03)
    bar.set_label("accuracy drop (points; red = worse)")
    n = ablation.get("limit")
    ax.set_title("Single-layer ablation" + (f" ({n} items per task)" if n else ""), pad=28)
    ax.spines[:].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def frontier_figure(rows: list[dict], efficiency: dict[tuple[str, float], dict], *, criteria: list[str],
                    methods: list[str], target: float, path: Path) -> Path:
    """Measured decode speedup (x) against retention (y) per task kind; one marker per criterion; recovered
    cells open, joined to their pruned cell by a dashed line; dotted verticals mark the ideal speedups; horizontal
    bars: the speedup's rank interval over timed rounds, where the efficiency.json has one."""
    plt = _plt()
    agg = aggregate(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    kinds = [k for k in KINDS if any(key[3] == k for key in agg)]
    ideals = {}
    for (crit, ratio), eff in efficiency.items():
        if "speedup" in eff and eff["speedup"].get("ideal"):  # a speculative cell has no FLOP ideal
            ideals[eff["num_layers"]] = eff["speedup"]["ideal"]
    for ideal in sorted(set(round(v, 3) for v in ideals.values())):
        ax.axvline(ideal, color="0.6", lw=0.8, ls=":")
    from matplotlib.transforms import offset_copy
    extent = [(1.0, 1.0), (1.0, target)]  # what the axes must show: artists drawn with an offset transform
    for kind in kinds:                     # do not count towards matplotlib's autoscaling
        color = KIND_COLOR.get(kind, "gray")
        for ci, crit in enumerate(criteria):
            marker = MARKERS[ci % len(MARKERS)]
            # criteria at one ratio share one speed measurement (same x): each criterion is drawn a few points
            # to the side, so markers that would coincide stay visible (the legend says so)
            shift = offset_copy(ax.transData, fig=fig, x=DODGE_POINTS * (ci - (len(criteria) - 1) / 2), y=0,
                                units="points")
            pts = []
            for key, a in agg.items():
                if key[0] != crit or key[3] != kind or key[2] != "none" or (crit, key[1]) not in efficiency:
                    continue
                eff = efficiency[(crit, key[1])]
                if "speedup" not in eff:
                    continue
                x = eff["speedup"]["decode"]
                iv = eff["speedup"].get("decode_interval") or {}  # rank interval over timed rounds (prunescope.speed)
                xlo, xhi = (iv["lo"], iv["hi"]) if iv.get("lo") is not None else (x, x)
                pts.append((x, a["retention"], a["lo"], a["hi"], xlo, xhi))
                extent += [(xlo, a["retention"]), (xhi, a["retention"]), (x, a["lo"]), (x, a["hi"])]
                for method in methods:
                    rec = agg.get((crit, key[1], method, kind))
                    if rec:
                        extent.append((x, rec["retention"]))
                        ax.plot([x, x], [a["retention"], rec["retention"]], color=color, ls="--", lw=1, transform=shift)
                        ax.plot([x], [rec["retention"]], marker=marker, mfc="white", mec=color, mew=1.6, ms=8, ls="",
                                transform=shift)
            if pts:
                pts.sort()
                xs, ys, lo, hi, xlo, xhi = zip(*pts)
                ax.errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                            xerr=[[max(0.0, x - l) for x, l in zip(xs, xlo)], [max(0.0, h - x) for x, h in zip(xs, xhi)]],
                            color=color, marker=marker, ms=7, ls="-", lw=0.8, alpha=0.9, capsize=2, transform=shift)
        ax.plot([1.0], [1.0], marker="*", color="black", ms=11, ls="")
    finite = [(x, y) for x, y in extent if x == x and y == y]
    ax.update_datalim(finite)
    ax.autoscale_view()
    ax.axhline(target, color="0.4", lw=0.8, ls="--")
    ax.set_xlabel("decode speedup over the base model (measured; dotted: ideal)")
    ax.set_ylabel("chance-adjusted retention")
    ax.yaxis.set_major_formatter(_percent())
    ax.xaxis.set_major_formatter(__import__("matplotlib.ticker", fromlist=["FuncFormatter"]).FuncFormatter(
        lambda v, _: f"{v:.2f}x"))
    ax.grid(alpha=0.25)
    handles = [plt.Line2D([], [], color=KIND_COLOR[k], lw=2.5) for k in kinds]
    labels = [kind_label(k) for k in kinds]
    handles += [plt.Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="") for i in range(len(criteria))]
    labels += list(criteria)
    if methods and any(k[2] != "none" for k in agg):
        handles.append(plt.Line2D([], [], color="0.3", marker="o", mfc="white", ls="--"))
        labels.append("after " + "/".join(methods) + " recovery")
    handles.append(plt.Line2D([], [], color="black", marker="*", ls="", ms=10))
    labels.append("base model")
    if len(criteria) > 1:
        handles.append(plt.Line2D([], [], ls=""))
        labels.append("criteria drawn side by side:\none speed measurement\nper ratio")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Efficiency frontier: speed gained vs accuracy kept")
    fig.tight_layout()
    return _save(fig, path)
