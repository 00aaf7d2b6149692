"""Reading what ``compare`` compares: a study run folder or a single eval folder, as a set of *units*.

A unit is one evaluated model: the study's baseline, one cell, or one cell's recovery; or the single model of
an eval folder (``metrics.json`` + ``samples.jsonl``, as ``prunescope eval --out`` writes them). Units are
keyed by what results.csv identifies a row's cell with — (method, criterion, ratio, recovery) — so the same
cell of two studies matches; an eval folder's one unit has a fixed key, so any two eval folders match (two
``prunescope eval`` outputs, or a cell folder and its ``recovery-<method>`` folder: before/after recovery).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prunescope.errors import UsageError
from prunescope.io import read_json

EVAL_KEY = ("eval", "", 0.0, "none")
BASELINE_KEY = ("none", "none", 0.0, "none")


@dataclass
class Unit:
    """One evaluated model of a run: its metrics.json content and the folder holding its samples.jsonl."""
    key: tuple
    label: str
    folder: Path
    metrics: dict
    _samples: list[dict] | None = field(default=None, repr=False)

    @property
    def samples(self) -> list[dict]:
        if self._samples is None:
            path = self.folder / "samples.jsonl"
            try:
                with open(path, encoding="utf-8") as fh:
                    self._samples = [json.loads(line) for line in fh if line.strip()]
            except FileNotFoundError:
                self._samples = []  # no per-item results: the comparison notes it and leaves the unit out
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {e.lineno} is not valid JSON; rerun the evaluation") from None
        return self._samples


@dataclass
class Run:
    """A study run folder (kind ``study``) or an eval folder (kind ``eval``) as units keyed by cell identity."""
    path: Path
    kind: str
    units: dict[tuple, Unit]

    @property
    def baseline(self) -> Unit | None:
        return self.units.get(BASELINE_KEY)


def cell_label(key: tuple) -> str:
    """How a unit is named in tables: as the study summary names cells (``reverse r=0.2 +lora``)."""
    method, criterion, ratio, recovery = key
    if key == BASELINE_KEY:
        return "baseline"
    if key == EVAL_KEY:
        return "eval"
    return f"{criterion} r={ratio:g}" + ("" if recovery == "none" else f" +{recovery}")


def _unit(key: tuple, folder: Path) -> Unit:
    return Unit(key, cell_label(key), folder, read_json(folder / "metrics.json"))


def load_run(path: str | Path) -> Run:
    """The run at ``path``: a study run folder (``baseline/``, ``cells/*/``), an eval folder, or an eval's
    metrics.json file. Anything else is a UsageError naming what was expected."""
    path = Path(path)
    if path.is_file() and path.name == "metrics.json":
        path = path.parent
    if not path.is_dir():
        raise UsageError(f"{path}: no such folder; pass a study run folder (e.g. runs/default) or an eval folder "
                         f"(metrics.json + samples.jsonl)")
    if (path / "baseline" / "metrics.json").is_file():
        units = {BASELINE_KEY: _unit(BASELINE_KEY, path / "baseline")}
        cells = sorted((path / "cells").glob("*/prunescope.json")) if (path / "cells").is_dir() else []
        metas = [(read_json(p), p.parent) for p in cells if (p.parent / "metrics.json").is_file()]  # finished cells
        # in the report's order (report/tables.py collect_results): config criteria first, then by name and ratio
        study = path / "study.json"
        order = {c: i for i, c in enumerate((read_json(study).get("config") or {}).get("criteria") or [])} \
            if study.is_file() else {}
        metas.sort(key=lambda m: (order.get(m[0]["criterion"], len(order)), m[0]["criterion"], float(m[0]["ratio"])))
        for meta, cell in metas:
            # the fields collect_results (report/tables.py) writes into results.csv for this cell
            base = (meta.get("method", "depth"), meta["criterion"], float(meta["ratio"]))
            units[(*base, "none")] = _unit((*base, "none"), cell)
            for rdir in sorted(cell.glob("recovery-*")):
                if (rdir / "metrics.json").is_file():
                    key = (*base, rdir.name.removeprefix("recovery-"))
                    units[key] = _unit(key, rdir)
        return Run(path, "study", units)
    if (path / "metrics.json").is_file():
        return Run(path, "eval", {EVAL_KEY: _unit(EVAL_KEY, path)})
    raise UsageError(f"{path} is not a run: expected a study run folder (with baseline/metrics.json) or an eval "
                     f"folder (metrics.json + samples.jsonl, from `prunescope eval --out DIR/metrics.json`)")


def run_names(paths: list[Path]) -> list[str]:
    """Short distinct names for the runs: the folder name, with as many parent folders as it takes to tell
    runs with the same folder name apart."""
    parts = [Path(p).resolve().parts for p in paths]
    distinct = list(dict.fromkeys(parts))
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = {p: "-".join(p[-depth:]).strip("/") or "root" for p in distinct}
        if len(set(names.values())) == len(names):
            break
    if len(distinct) == len(parts):
        return [names[p] for p in parts]
    return [f"{names[p]}-{i}" for i, p in enumerate(parts, 1)]  # one run given twice: number them
