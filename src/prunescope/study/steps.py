"""Study steps and their identities: a finished step is reused only when nothing that can change its output
has changed.

A step's ``inputs`` hold every setting that can change what it writes (model, dtype, seed, tasks, limit,
data, criterion and scoring settings, recovery method and settings, efficiency and ablation settings,
the prunescope version) plus the identities of the steps it reads from, so a change upstream reaches every
step downstream. ``steps.json`` in the run folder records, per step, the identity and inputs its artifacts
were made with. The entry is written before the step runs and the step's artifacts are deleted first when
they are stale, so a kill at any moment never leaves an old artifact under a new identity.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunescope.io import read_json, write_json

MANIFEST = "steps.json"


@dataclass
class Step:
    """One unit of work: ``outputs[0]`` is its 'finished' mark (written last); every output is deleted
    before a stale step is recomputed."""
    key: str
    label: str
    inputs: dict[str, Any]
    outputs: list[Path]
    run: Callable[[], None]
    extra_done: Callable[[], bool] = field(default=lambda: True)
    work: float = 0.0  # items it evaluates (0: not an evaluation); steps without a measured kind are estimated by it

    @property
    def identity(self) -> str:
        text = json.dumps(self.inputs, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def finished(self) -> bool:
        return all(p.exists() for p in self.outputs[:1]) and self.extra_done()

    def clear(self) -> None:
        for path in self.outputs:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


class Manifest:
    """``steps.json``: ``{step key: {"identity": ..., "inputs": {...}}}``, rewritten atomically."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / MANIFEST
        self.entries: dict[str, dict] = read_json(self.path) if self.path.is_file() else {}

    def done(self, step: Step) -> bool:
        return step.finished() and self.entries.get(step.key, {}).get("identity") == step.identity

    def stale(self, step: Step) -> bool:
        """Finished under another identity (or with none recorded)."""
        return step.finished() and self.entries.get(step.key, {}).get("identity") != step.identity

    def reasons(self, step: Step) -> list[str]:
        """What differs from the recorded inputs, as dotted keys (``recovery.lr``, ``after scores/angular-k3``)."""
        old = self.entries.get(step.key)
        if old is None:
            return ["no identity recorded"]
        return diff_keys(old.get("inputs", {}), step.inputs)

    def record(self, step: Step) -> None:
        self.entries[step.key] = {"identity": step.identity, "inputs": step.inputs}
        write_json(self.path, self.entries)


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings; changed dependencies read
    'after <step>' (that step's own inputs changed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                if prefix == "" and key == "after":
                    deps = old.get(key) or {}
                    now = new.get(key) or {}
                    out += [f"after {d}" for d in sorted(set(deps) | set(now)) if deps.get(d) != now.get(d)]
                else:
                    out += diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if old != new else []


# ---- progress: what is left and when it should be done, from steps measured on this machine ----

def step_kind(key: str) -> str:
    """Steps of one kind take about as long as each other: evaluations, compression-method cells, scores,
    recovery, efficiency, ablation."""
    if "/recovery-" in key:
        return "recovery"
    if key.startswith("cells/method-"):
        return "method"  # compress, then evaluate and time: costs differ from a depth cell's
    if key == "baseline" or key.startswith("cells/"):
        return "eval"
    return key.split("/")[0]


# Cost of a step of a kind not measured yet, relative to the mean measured evaluation step, as measured in
# the default study on 2 CPU cores (evaluations 75-182 s, mean 121 s): recovery 216 s, a compression-method
# cell 78-109 s (a full-depth or cheaper model evaluated), efficiency 4-5 s (a few timed generations).
PRIOR_VS_EVAL = {"recovery": 1.8, "method": 0.75, "efficiency": 0.04}


def plan_text(pending: list[Step], timings: dict[str, dict] | None = None) -> str:
    """How many steps of each kind are left; with steps measured by an earlier attempt in the folder
    (``timings``), the estimated time they take."""
    counts: dict[str, int] = {}
    for s in pending:
        counts[step_kind(s.key)] = counts.get(step_kind(s.key), 0) + 1
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing left to do"
    left = estimate_seconds(pending, timings or {}) if pending else None
    if left is not None:
        text += f"; about {duration(left)}, from {len(timings)} step(s) measured here before"
    return text


def estimate_seconds(todo: list[Step], timings: dict[str, dict]) -> float | None:
    """Seconds the steps in ``todo`` should take, from the measured steps of the same kind on this machine
    (this run and earlier attempts in the folder); None until one step has been measured. A kind not
    measured yet is estimated from the measured evaluations times its prior (``PRIOR_VS_EVAL``), from the
    measured seconds per evaluated item (other steps that evaluate), else as the mean measured step."""
    by_kind: dict[str, list[float]] = {}
    for key, t in timings.items():
        by_kind.setdefault(step_kind(key), []).append(float(t["seconds"]))
    if not by_kind:
        return None
    overall = sum(sum(v) for v in by_kind.values()) / sum(len(v) for v in by_kind.values())
    # seconds per evaluated item, for kinds not measured yet (the ablation evaluates few items per step)
    worked = [(float(t["seconds"]), float(t["work"])) for t in timings.values() if t.get("work")]
    per_item = sum(w[0] for w in worked) / sum(w[1] for w in worked) if worked else None
    evals = by_kind.get("eval")

    def guess(step: Step) -> float:
        kind = step_kind(step.key)
        if kind in by_kind:
            return sum(by_kind[kind]) / len(by_kind[kind])
        if kind in PRIOR_VS_EVAL and evals:
            return PRIOR_VS_EVAL[kind] * sum(evals) / len(evals)
        if step.work and per_item is not None:
            return step.work * per_item
        return overall

    return sum(guess(s) for s in todo)


def eta_text(todo: list[Step], timings: dict[str, dict], now: _dt.datetime | None = None) -> str:
    left = estimate_seconds(todo, timings)
    if left is None:
        return ", estimate after the first step"
    finish = (now or _dt.datetime.now()) + _dt.timedelta(seconds=left)
    m, sec = divmod(int(left), 60)
    return f", about {m}m{sec:02d}s left, done about {finish:%H:%M}"


def step_line(index: int, steps: int, step: Step, todo: list[Step], elapsed: float, timings: dict[str, dict],
              now: _dt.datetime | None = None) -> str:
    """The one line a study logs when a step starts: its number, label, how many are left, time elapsed and
    the estimate (``todo`` starts with this step)."""
    return (f"[{index}/{steps}] {step.label}  ({len(todo) - 1} left after this, {duration(elapsed)} elapsed"
            f"{eta_text(todo, timings, now)})")


def duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
