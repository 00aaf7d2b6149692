"""results.csv and the aggregates the report is made of, all read from a run folder's files.

A row of results.csv is one (cell, task): criterion, ratio, layers_removed, removed (0-based layers,
space-separated), recovery (``none`` or the method), task, kind, n, accuracy, ci_lo, ci_hi, chance,
retention (accuracy / baseline accuracy). The baseline is the row set with criterion ``none``, ratio 0.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from prunescope.io import read_json, write_text

COLUMNS = ["criterion", "ratio", "layers_removed", "removed", "recovery", "task", "kind", "n", "accuracy", "ci_lo",
           "ci_hi", "chance", "retention"]
KIND_LABEL = {"multiple_choice": "classification", "generate": "generative"}
KINDS = ["multiple_choice", "generate"]


def kind_label(kind: str) -> str:
    return KIND_LABEL.get(kind, kind)


def study_info(run_dir: Path) -> dict:
    """study.json, or an empty provenance when the folder has none."""
    path = Path(run_dir) / "study.json"
    return read_json(path) if path.is_file() else {"config": {}}


def _rows_for(metrics: dict, *, criterion: str, ratio: float, removed: list[int], recovery: str,
              baseline: dict[str, float], tasks: list[str]) -> list[dict]:
    rows = []
    names = [t for t in tasks if t in metrics["tasks"]] + [t for t in metrics["tasks"] if t not in tasks]
    for task in names:
        m = metrics["tasks"][task]
        lo, hi = (m.get("ci95") or [math.nan, math.nan])[:2]
        base = baseline.get(task)
        rows.append({
            "criterion": criterion, "ratio": ratio, "layers_removed": len(removed),
            "removed": " ".join(str(i) for i in removed), "recovery": recovery, "task": task, "kind": m["kind"],
            "n": m.get("n"), "accuracy": m["accuracy"], "ci_lo": lo, "ci_hi": hi, "chance": m.get("chance"),
            "retention": m["accuracy"] / base if base else None,
        })
    return rows


def collect_results(run_dir: str | Path) -> list[dict]:
    """Every (cell, task) row, read from baseline/ and cells/*/ metrics files, in config order."""
    run_dir = Path(run_dir)
    cfg = study_info(run_dir).get("config", {})
    base = read_json(run_dir / "baseline" / "metrics.json")
    tasks = list(cfg.get("tasks") or base["tasks"])
    baseline = {t: m["accuracy"] for t, m in base["tasks"].items()}
    rows = _rows_for(base, criterion="none", ratio=0.0, removed=[], recovery="none", baseline=baseline, tasks=tasks)
    cells = [p for p in (run_dir / "cells").glob("*/prunescope.json")] if (run_dir / "cells").is_dir() else []
    metas = [(read_json(p), p.parent) for p in cells]
    crit_order = {c: i for i, c in enumerate(cfg.get("criteria") or [])}
    methods = list((cfg.get("recovery") or {}).get("methods") or [])
    metas.sort(key=lambda m: (crit_order.get(m[0]["criterion"], len(crit_order)), m[0]["criterion"], m[0]["ratio"]))
    for meta, cell in metas:
        if not (cell / "metrics.json").is_file():
            continue
        common = dict(criterion=meta["criterion"], ratio=float(meta["ratio"]), removed=meta["removed_layers"],
                      baseline=baseline, tasks=tasks)
        rows += _rows_for(read_json(cell / "metrics.json"), recovery="none", **common)
        found = sorted(p.name.removeprefix("recovery-") for p in cell.glob("recovery-*") if (p / "metrics.json").is_file())
        for method in sorted(found, key=lambda m: (methods.index(m) if m in methods else len(methods), m)):
            rows += _rows_for(read_json(cell / f"recovery-{method}" / "metrics.json"), recovery=method, **common)
    return rows


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    return buf.getvalue()


def write_results_csv(run_dir: str | Path) -> Path:
    """Rebuild ``results.csv`` from the run folder's metrics files (atomically; left untouched when unchanged)."""
    path = Path(run_dir) / "results.csv"
    text = results_csv_text(collect_results(run_dir))
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    return write_text(path, text)


def read_results_csv(path: str | Path) -> list[dict]:
    """results.csv with numbers parsed (empty cells become None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = dict(row)
            for key in ("ratio", "accuracy", "ci_lo", "ci_hi", "chance", "retention"):
                parsed[key] = float(row[key]) if row.get(key) not in (None, "") else None
            for key in ("layers_removed", "n"):
                parsed[key] = int(row[key]) if row.get(key) not in (None, "") else None
            parsed["removed"] = [int(i) for i in (row.get("removed") or "").split()]
            out.append(parsed)
    return out


def baseline_rows(rows: list[dict]) -> dict[str, dict]:
    return {r["task"]: r for r in rows if r["criterion"] == "none"}


def retention_band(row: dict, base: dict) -> tuple[float, float]:
    """Retention interval: the accuracy's 95% interval divided by the baseline accuracy."""
    b = base["accuracy"]
    if not b or row["ci_lo"] is None:
        return (math.nan, math.nan)
    return row["ci_lo"] / b, row["ci_hi"] / b


def aggregate(rows: list[dict]) -> dict[tuple, dict]:
    """Per (criterion, ratio, recovery, kind): mean accuracy and retention over that kind's tasks, with
    the mean of the per-task retention bounds as the band (a conservative summary of the tasks' 95% intervals)."""
    base = baseline_rows(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["criterion"] == "none" or r["task"] not in base or not base[r["task"]]["accuracy"]:
            continue
        groups[(r["criterion"], r["ratio"], r["recovery"], r["kind"])].append(r)
    out = {}
    for key, members in groups.items():
        bands = [retention_band(m, base[m["task"]]) for m in members]
        out[key] = {
            "retention": sum(m["retention"] for m in members) / len(members),
            "lo": sum(b[0] for b in bands) / len(bands), "hi": sum(b[1] for b in bands) / len(bands),
            "accuracy": sum(m["accuracy"] for m in members) / len(members),
            "layers_removed": members[0]["layers_removed"], "tasks": [m["task"] for m in members],
            "chance_retention": sum((m["chance"] or 0) / base[m["task"]]["accuracy"] for m in members) / len(members),
        }
    return out


def ordered(values, order: list | None = None) -> list:
    """Distinct values in ``order`` first (config order), then the rest sorted."""
    seen = list(dict.fromkeys(values))
    order = [v for v in (order or []) if v in seen]
    return order + sorted(v for v in seen if v not in order)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import numpy as np

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            idx = x == v
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])
