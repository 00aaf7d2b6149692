"""results.csv and the aggregates the report is made of, all read from a run folder's files.

A row of results.csv is one (cell, task): criterion, ratio, layers_removed, removed (0-based layers,
space-separated), recovery (``none`` or the method), task, kind, n, accuracy, ci_lo, ci_hi, chance,
retention (accuracy / baseline accuracy) with retention_lo/hi, retention_adj ((accuracy - chance) /
(baseline - chance)) with retention_adj_lo/hi, adj_note (why a task has no adjusted retention);
kind_retention_adj(_lo/_hi): mean adjusted retention of the row's kind in its cell; gap(_lo/_hi), verdict,
gap_note: the cell's classification-minus-generation gap in mean adjusted retention (repeated on each
row of the cell); method: ``none`` for the baseline, ``depth`` for the pruning grid, else the compression
method of a ``methods:`` cell (study/methods_axis.py). Intervals are 95% paired bootstrap intervals over items (prunescope.stats), read from
the samples.jsonl files. The baseline is the row set with criterion ``none``, ratio 0.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from prunescope import stats
from prunescope.io import read_json, write_text

COLUMNS = ["criterion", "ratio", "layers_removed", "removed", "recovery", "task", "kind", "n", "accuracy", "ci_lo",
           "ci_hi", "chance", "retention", "retention_lo", "retention_hi", "retention_adj", "retention_adj_lo",
           "retention_adj_hi", "adj_note", "kind_retention_adj", "kind_retention_adj_lo", "kind_retention_adj_hi",
           "gap", "gap_lo", "gap_hi", "verdict", "gap_note", "method", "recovery_data"]
FLOATS = ["ratio", "accuracy", "ci_lo", "ci_hi", "chance", "retention", "retention_lo", "retention_hi", "retention_adj",
          "retention_adj_lo", "retention_adj_hi", "kind_retention_adj", "kind_retention_adj_lo",
          "kind_retention_adj_hi", "gap", "gap_lo", "gap_hi"]
KIND_LABEL = {"multiple_choice": "classification", "generate": "generative"}
KINDS = ["multiple_choice", "generate"]


def kind_label(kind: str) -> str:
    return KIND_LABEL.get(kind, kind)


def study_info(run_dir: Path) -> dict:
    """study.json, or an empty provenance when the folder has none."""
    path = Path(run_dir) / "study.json"
    return read_json(path) if path.is_file() else {"config": {}}


def _samples(folder: Path) -> list[dict] | None:
    path = folder / "samples.jsonl"
    if not path.is_file():
        return None
    import json
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _rows_for(metrics: dict, *, criterion: str, ratio: float, removed: list[int], recovery: str,
              baseline: dict[str, dict], tasks: list[str], base_samples: list[dict] | None = None,
              samples: list[dict] | None = None, seed: int = 0) -> list[dict]:
    """Rows of one cell, with paired-bootstrap retention when both cells' samples are at hand."""
    rows, paired = [], []
    pairs = stats.pair_samples(base_samples, samples) if base_samples is not None and samples is not None else {}
    names = [t for t in tasks if t in metrics["tasks"]] + [t for t in metrics["tasks"] if t not in tasks]
    for task in names:
        m = metrics["tasks"][task]
        lo, hi = (m.get("ci95") or [math.nan, math.nan])[:2]
        b = baseline.get(task) or {}
        base, chance = b.get("accuracy"), m.get("chance", b.get("chance"))
        row = {"criterion": criterion, "ratio": ratio, "layers_removed": len(removed),
               "removed": " ".join(str(i) for i in removed), "recovery": recovery, "task": task, "kind": m["kind"],
               "n": m.get("n"), "accuracy": m["accuracy"], "ci_lo": lo, "ci_hi": hi, "chance": chance,
               "retention": m["accuracy"] / base if base else None}
        if base is not None:
            note = stats.adjusted_reason(base, chance)
            row.update(retention_adj=None if note else (m["accuracy"] - chance) / (base - chance), adj_note=note)
        if criterion == "none":
            pass  # the baseline against itself: retention 1 by definition, no interval
        elif task in pairs:
            ids, fb, fo = pairs[task]
            p = stats.Paired(task, m["kind"], chance, ids, fb, fo, seed=seed)
            paired.append(p)
            row.update(p.summary())
        elif base is not None:
            row["adj_note"] = row["adj_note"] or "no per-item samples paired with the baseline: no interval"
        rows.append(row)
    if paired:
        gap = stats.kind_gap(paired)
        for row in rows:
            kind = gap["kinds"].get(row["kind"])
            if kind:
                row.update(kind_retention_adj=kind["retention_adj"], kind_retention_adj_lo=kind["lo"],
                           kind_retention_adj_hi=kind["hi"])
            row.update(gap=gap["gap"], gap_lo=gap["gap_lo"], gap_hi=gap["gap_hi"], verdict=gap["verdict"],
                       gap_note=gap["reason"])
    return rows


def unsigned_zero(text: str) -> str:
    """A formatted number that reads as zero loses its sign: "-0", "+0.0", "-0%" become "0", "0.0", "0%"
    (a tiny negative rounded to zero is not a loss, and "+0" is not a gain)."""
    if text[:1] in "+-" and not any(c in "123456789" for c in text):
        return text[1:]
    return text


def fmt_num(x, spec: str, missing: str = "") -> str:
    """``format(x, spec)`` without the sign of a zero; ``missing`` for None or NaN."""
    return missing if x is None or x != x else unsigned_zero(format(x, spec))


def fmt_pct(x, missing: str = "-") -> str:
    """``x`` as a whole percentage; ``missing`` for None or NaN (no estimate)."""
    return fmt_num(x, ".0%", missing)


def recovery_data_label(rdir: Path) -> str:
    """What a recovery trained on, from its recover.json: e.g. "general recovery: self-instruct"."""
    path = rdir / "recover.json"
    data = (read_json(path).get("data") or {}) if path.is_file() else {}
    if not data:
        return ""
    return f"{data.get('label', 'recovery')}: {data.get('prompt_source', '?')}"


def collect_results(run_dir: str | Path) -> list[dict]:
    """Every (cell, task) row, read from baseline/ and cells/*/ metrics and samples files, in config order."""
    run_dir = Path(run_dir)
    cfg = study_info(run_dir).get("config", {})
    base = read_json(run_dir / "baseline" / "metrics.json")
    base_samples = _samples(run_dir / "baseline")
    tasks = list(cfg.get("tasks") or base["tasks"])
    baseline = base["tasks"]
    seed = int(cfg.get("seed") or 0)
    rows = _rows_for(base, criterion="none", ratio=0.0, removed=[], recovery="none", baseline=baseline, tasks=tasks)
    rows = [{**row, "method": "none"} for row in rows]
    cells = [p for p in (run_dir / "cells").glob("*/prunescope.json")] if (run_dir / "cells").is_dir() else []
    metas = [(read_json(p), p.parent) for p in cells]
    crit_order = {c: i for i, c in enumerate(cfg.get("criteria") or [])}
    methods = list((cfg.get("recovery") or {}).get("methods") or [])
    metas.sort(key=lambda m: (crit_order.get(m[0]["criterion"], len(crit_order)), m[0]["criterion"], m[0]["ratio"]))
    for meta, cell in metas:
        if not (cell / "metrics.json").is_file():
            continue
        common = dict(criterion=meta["criterion"], ratio=float(meta["ratio"]), removed=meta["removed_layers"],
                      baseline=baseline, tasks=tasks, base_samples=base_samples, seed=seed)
        cell_rows = _rows_for(read_json(cell / "metrics.json"), recovery="none", samples=_samples(cell), **common)
        for row in cell_rows:  # the compression method (study/methods_axis.py); plain cells are depth pruning
            row["method"] = meta.get("method", "depth")
        rows += cell_rows
        found = sorted(p.name.removeprefix("recovery-") for p in cell.glob("recovery-*") if (p / "metrics.json").is_file())
        for method in sorted(found, key=lambda m: (methods.index(m) if m in methods else len(methods), m)):
            rdir = cell / f"recovery-{method}"
            rec_rows = _rows_for(read_json(rdir / "metrics.json"), recovery=method, samples=_samples(rdir), **common)
            data = recovery_data_label(rdir)
            rows += [{**row, "method": meta.get("method", "depth"), "recovery_data": data} for row in rec_rows]
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
            for key in FLOATS:
                parsed[key] = float(row[key]) if row.get(key) not in (None, "") else None
            for key in ("layers_removed", "n"):
                parsed[key] = int(row[key]) if row.get(key) not in (None, "") else None
            parsed["removed"] = [int(i) for i in (row.get("removed") or "").split()]
            out.append(parsed)
    return out


def baseline_rows(rows: list[dict]) -> dict[str, dict]:
    return {r["task"]: r for r in rows if r["criterion"] == "none"}


def aggregate(rows: list[dict]) -> dict[tuple, dict]:
    """Per (criterion, ratio, recovery, kind): ``retention`` = mean chance-adjusted retention over the kind's
    tasks that have one, with ``lo``/``hi`` its paired-bootstrap 95% interval; ``raw`` = mean raw retention;
    ``excluded`` = the kind's tasks left out (base too close to chance). Kinds with no eligible task are absent."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["criterion"] != "none":
            groups[(r["criterion"], r["ratio"], r["recovery"], r["kind"])].append(r)
    out = {}
    for key, members in groups.items():
        eligible = [m for m in members if m.get("retention_adj") is not None]
        if not eligible:
            continue
        first = eligible[0]
        point = first.get("kind_retention_adj")
        out[key] = {
            "retention": point if point is not None else sum(m["retention_adj"] for m in eligible) / len(eligible),
            "lo": _nan(first.get("kind_retention_adj_lo")), "hi": _nan(first.get("kind_retention_adj_hi")),
            "raw": _mean([m["retention"] for m in members]),
            "accuracy": sum(m["accuracy"] for m in members) / len(members),
            "layers_removed": members[0]["layers_removed"], "tasks": [m["task"] for m in eligible],
            "excluded": [m["task"] for m in members if m.get("retention_adj") is None],
            "gap": _nan(first.get("gap")), "gap_lo": _nan(first.get("gap_lo")), "gap_hi": _nan(first.get("gap_hi")),
            "verdict": first.get("verdict") or "",
        }
    return out


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


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
