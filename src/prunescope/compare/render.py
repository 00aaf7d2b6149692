"""compare.md / compare.html (one document, report.html.Doc), compare.png and the terminal table."""
from __future__ import annotations

import math
from pathlib import Path

from prunescope.report.figures import CRITERION_COLORS, _plt, _save
from prunescope.report.html import Doc
from prunescope.report.tables import fmt_pct, kind_label

FIGURE = "compare.png"


def fmt_diff(x: float) -> str:
    """A difference in percentage points with its sign; no sign on zero."""
    if x is None or x != x:
        return "-"
    points = round(100 * x)
    return "0" if points == 0 else f"{points:+d}"


def _interval(row: dict) -> str:
    return f"{fmt_diff(row['diff'])} [{fmt_diff(row['lo'])}, {fmt_diff(row['hi'])}]"


def _n(row: dict) -> str:
    return str(row["n_a"]) if row["paired"] else f"{row['n_a']} / {row['n_b']}"


def document(result: dict) -> Doc:
    """The comparison as a Doc: which runs, per comparison a task table and a retention table, the figure."""
    runs, comps = result["runs"], result["comparisons"]
    doc = Doc("prunescope compare: " + " vs ".join(r["name"] for r in runs))
    doc.bullets([f"**{r['letter']}** = `{r['path']}` ({r['kind']} folder)" for r in runs])
    matched = " (matched by id alone)" if result["match"] == "id" else " (same id and same prompt)"
    mode = ("independent resamples of each run's items (--unpaired)" if result["unpaired"] else
            "paired bootstrap over the items both runs evaluated" + matched)
    doc.para(f"Differences are in percentage points, later run minus first (B − A), with 95% intervals from a {mode}; "
             f"{result['resamples']} resamples, seed {result['seed']}. A run is called higher only when the interval "
             f"excludes 0; otherwise \"not distinguishable\".")
    for comp in comps:
        a, b = comp["a"], comp["b"]
        doc.heading(f"{b} vs {a}")
        doc.table(["cell", "task", "kind", "n", f"{a} acc.", f"{b} acc.", f"{b} − {a} [95%]", "reading"],
                  [[r["cell"], r["task"], kind_label(r["kind"]), _n(r), fmt_pct(r["acc_a"]), fmt_pct(r["acc_b"]),
                    _interval(r), r["verdict"]] for r in comp["tasks"]],
                  caption=f"Accuracy per (cell, task) on the items both runs evaluated (n).")
        if comp["retention"]:
            doc.table(["cell", "kind", "tasks", f"{a} retention", f"{b} retention", f"{b} − {a} [95%]", "reading"],
                      [[r["cell"], kind_label(r["kind"]), ", ".join(r["tasks"]), fmt_pct(r["ret_a"]),
                        fmt_pct(r["ret_b"]), _interval(r), r["verdict"]] for r in comp["retention"]],
                      caption="Chance-adjusted retention per cell and kind, each run's cell against its own baseline "
                              "((acc − chance) / (base − chance), mean over the kind's tasks, as in the report).")
        notes = _notes(comp)
        if notes:
            doc.para("Notes: what was left out, and items only partly shared.")
            doc.bullets(notes)
    doc.heading("Figure")
    doc.figure(FIGURE, "Accuracy difference (percentage points, later run minus A) per task and cell, with 95% "
                       "intervals; 0 = no difference.")
    return doc


def _notes(comp: dict) -> list[str]:
    """What a comparison left out, and why."""
    a, b = comp["a"], comp["b"]
    notes = [f"only in {a}: {', '.join(comp['only_a'])}"] if comp["only_a"] else []
    notes += [f"only in {b}: {', '.join(comp['only_b'])}"] if comp["only_b"] else []
    notes += [f"{cell} / {task}: {n} item(s) share an id but differ in content; left out"
              for cell, task, n in comp["content_differs"]]
    notes += comp["notes"]
    notes += [f"{r['cell']} {kind_label(r['kind'])} retention: left out {', '.join(r['left_out'])}"
              for r in comp["retention"] if r["left_out"]]
    return notes


def figure(result: dict, path: Path) -> Path:
    """One panel per task; per cell a point and its interval bar for each comparison (colour)."""
    plt = _plt()
    comps = result["comparisons"]
    tasks = list(dict.fromkeys(r["task"] for c in comps for r in c["tasks"]))
    cells = list(dict.fromkeys(r["cell"] for c in comps for r in c["tasks"]))
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    row_height = max(1.8, 0.8 + 0.32 * len(cells) * len(comps) ** 0.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, row_height * nrows), sharey=True, squeeze=False)
    step = 0.6 / max(1, len(comps))
    for ax, task in zip(axes.flat, tasks):
        ax.axvline(0, color="0.6", lw=0.8)
        for ci, comp in enumerate(comps):
            rows = [r for r in comp["tasks"] if r["task"] == task]
            y = [cells.index(r["cell"]) + (ci - (len(comps) - 1) / 2) * step for r in rows]
            x = [100 * r["diff"] for r in rows]  # percentage points
            err = [[100 * (r["diff"] - r["lo"]) for r in rows], [100 * (r["hi"] - r["diff"]) for r in rows]]
            ax.errorbar(x, y, xerr=err, fmt="o", ms=4, capsize=2, color=CRITERION_COLORS[ci % len(CRITERION_COLORS)],
                        label=f"{comp['b']} − {comp['a']}")
        ax.set_title(task)
        ax.set_xlabel("difference (points)")
    # one x scale for every panel, symmetric around 0 and at least ±5 points, so panels read alike
    reach = max([5.0] + [100 * abs(v) for c in comps for r in c["tasks"] for v in (r["lo"], r["hi"])
                         if math.isfinite(v)])
    for ax in axes.flat:
        ax.set_xlim(-1.08 * reach, 1.08 * reach)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    axes[0][0].set_yticks(range(len(cells)), cells)
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(comps), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def terminal_table(result: dict) -> str:
    """Plain-text table per comparison: cell, task, n, accuracies, B − A with its interval, reading."""
    blocks = []
    for comp in result["comparisons"]:
        a, b = comp["a"], comp["b"]
        head = ["cell", "task", "n", a, b, f"{b}-{a} [95%]", "reading"]
        lines = [[r["cell"], r["task"], _n(r), fmt_pct(r["acc_a"]), fmt_pct(r["acc_b"]), _interval(r), r["verdict"]]
                 for r in comp["tasks"]]
        lines += [[r["cell"], f"{kind_label(r['kind'])} retention", "", fmt_pct(r["ret_a"]), fmt_pct(r["ret_b"]),
                   _interval(r), r["verdict"]] for r in comp["retention"]]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
        fmt = lambda cols: "  ".join(str(x).ljust(w) for x, w in zip(cols, widths)).rstrip()  # noqa: E731
        block = [fmt(head), *map(fmt, lines)]
        notes = _notes(comp)
        if notes:  # the first few; compare.md lists them all
            block.append("notes: " + "; ".join(notes[:2]) + (f"; {len(notes) - 2} more in compare.md"
                                                                     if len(notes) > 2 else ""))
        blocks.append("\n".join(block))
    legend = "; ".join(f"{r['letter']} = {r['path']}" for r in result["runs"])
    return "\n\n".join(blocks) + f"\n{legend}; differences in percentage points"
