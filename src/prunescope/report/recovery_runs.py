"""The recovery table: per recovered cell, what each recovery trained on and how much (from recover.json)."""
from __future__ import annotations

from pathlib import Path

from prunescope.io import read_json

HEADERS = ["cell", "recovery", "loss", "sequences", "response tokens", "token budget", "steps", "final loss"]
CAPTION = ("What each recovery trained on, from its recover.json. Response tokens are the tokens the loss was "
           "computed on; recoveries of one cell compared at equal budget show the same count.")


def recovery_rows(run_dir: str | Path) -> list[list[str]]:
    """One row per ``cells/*/recovery-*/recover.json``: cell, recovery label, loss, whose sequences,
    response tokens trained, the token budget (or -), steps, final loss."""
    rows = []
    for path in sorted(Path(run_dir).glob("cells/*/recovery-*/recover.json")):
        s = read_json(path)
        cfg, data = s.get("config") or {}, s.get("data") or {}
        loss = cfg.get("loss", "?")
        if loss == "onpolicy":
            loss += f" (lambda {cfg.get('onpolicy_lambda')}, beta {cfg.get('onpolicy_beta')})"
        budget = s.get("token_budget")
        rows.append([path.parent.parent.name, path.parent.name.removeprefix("recovery-"), loss,
                     s.get("sequences") or data.get("sequences") or "-", f"{s.get('response_tokens', 0):,}",
                     f"{budget:,}" if budget else "-", str(s.get("steps", "-")),
                     f"{s['final_loss']:.4f}" if isinstance(s.get("final_loss"), float) else "-"])
    return rows
