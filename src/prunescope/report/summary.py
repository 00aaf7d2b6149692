"""The compact table ``prunescope study`` prints at the end: per cell, chance-adjusted retention of each
kind with its 95% interval, the gap's reading and the measured decode speedup."""
from __future__ import annotations

from pathlib import Path

from prunescope.report.tables import KINDS, aggregate, fmt_pct, kind_label, read_results_csv
from prunescope.speed import fmt_speedup


def summary_table(run_dir: str | Path) -> str:
    """Plain-text table of the run's cells (read from results.csv and the cells' efficiency.json); a '*' marks,
    per kind and ratio, the cell that kept most."""
    run_dir = Path(run_dir)
    rows = read_results_csv(run_dir / "results.csv")
    agg = aggregate(rows)
    kinds = [k for k in KINDS if any(key[3] == k for key in agg)]
    cells = sorted({key[:3] for key in agg}, key=lambda c: (c[1], c[2] != "none", c[2], c[0]))
    best = {}
    for kind in kinds:
        for ratio in {c[1] for c in cells}:
            options = [(agg[(c, r, rec, kind)]["retention"], (c, r, rec)) for c, r, rec in cells
                       if r == ratio and (c, r, rec, kind) in agg]
            if options:
                best[(kind, ratio)] = max(options, key=lambda o: o[0])[1]
    head = ["cell", *[f"{kind_label(k)} adj. [95%]" for k in kinds], "gap reading", "decode [90%]"]
    lines = []
    for c, r, rec in cells:
        name = f"{c} r={r:g}" + ("" if rec == "none" else f" +{rec}")
        vals = []
        for kind in kinds:
            a = agg.get((c, r, rec, kind))
            mark = "*" if best.get((kind, r)) == (c, r, rec) else " "
            vals.append("-" if a is None else f"{fmt_pct(a['retention'])} [{fmt_pct(a['lo'])}, {fmt_pct(a['hi'])}]{mark}")
        first = next(agg[(c, r, rec, k)] for k in kinds if (c, r, rec, k) in agg)
        lines.append([name, *vals, first["verdict"] or "-", _speed(rows, c, r, rec)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cols: "  ".join(str(x).ljust(w) for x, w in zip(cols, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), *map(fmt, lines), "* = kept most of that kind at that ratio; adj. = chance-adjusted retention"])


def _speed(rows: list[dict], criterion: str, ratio: float, recovery: str) -> str:
    """The cell's decode speedup with its interval, from its results.csv rows (depth and method cells)."""
    row = next((x for x in rows if x["criterion"] == criterion and x["ratio"] == ratio and x["recovery"] == recovery
                and x.get("decode_speedup") == x.get("decode_speedup") and x.get("decode_speedup") is not None), None)
    if row is None:
        return "-"
    lo, hi = row.get("decode_speedup_lo"), row.get("decode_speedup_hi")
    interval = {"lo": lo, "hi": hi} if lo is not None and lo == lo else None
    return fmt_speedup(row["decode_speedup"], interval)
