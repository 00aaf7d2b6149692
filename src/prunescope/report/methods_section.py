"""The report's words and table for compression methods beside depth pruning (the study's ``methods:`` axis).

Depth-pruning cells are compared with each other in the headline; a method cell (merge, width, quant,
speculative, ...) is a different way of spending the same budget, so it gets its own table and findings:
retention of each kind with its interval next to the measured decode speedup and weight memory. A method
is said to keep more (or less) of a kind than depth pruning only when its interval lies wholly above (or
below) the intervals of every depth-pruning criterion at that budget; otherwise the data cannot separate them.
"""
from __future__ import annotations

from prunescope.report.tables import KIND_LABEL, fmt_pct

DEPTH = ("depth", "none")


def _band(p: dict) -> str:
    return f"{fmt_pct(p['retention'])} [{fmt_pct(p['lo'])}, {fmt_pct(p['hi'])}]"


def compare_with_depth(point: dict, depth: list[dict]) -> str:
    """'more', 'less' or 'not distinguishable': ``point`` against the depth points of the same kind."""
    if not depth or point["lo"] != point["lo"]:
        return "not distinguishable"
    if point["lo"] > max(d["hi"] for d in depth):
        return "more"
    if point["hi"] < min(d["lo"] for d in depth):
        return "less"
    return "not distinguishable"


def _notes(meta: dict) -> str:
    """What a method's record says that changes how its row reads."""
    if meta.get("method") == "merge" and not meta.get("merges"):
        return f"no merge passed LaCo's similarity threshold ({meta.get('settings', {}).get('threshold')}): " \
               "the model is unchanged"
    if meta.get("method") == "speculative":
        return "lossless by construction (the full model verifies every token); only speed changes"
    return ""


def methods_section(points: list[dict], metas: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """(findings, table rows) for the method cells among ``points`` (``report.frontier.frontier_points``);
    ``metas`` maps a point's label to its cell's prunescope.json. Empty when the study ran no method."""
    methods = [p for p in points if p["method"] not in DEPTH]
    if not methods:
        return [], []
    labels = list(dict.fromkeys(p["label"] for p in methods))
    findings, table = [], []
    for label in labels:
        mine = {p["kind"]: p for p in methods if p["label"] == label}
        first = next(iter(mine.values()))
        parts, row = [], [label]
        for kind in ("multiple_choice", "generate"):
            p = mine.get(kind)
            if p is None:
                row.append("")
                continue
            depth = [d for d in points if d["method"] in DEPTH and d["kind"] == kind]
            verdict = compare_with_depth(p, depth)
            row.append(_band(p))
            said = {"more": "more than every depth criterion", "less": "less than every depth criterion",
                    "not distinguishable": "not distinguishable from depth pruning"}[verdict]
            parts.append(f"{KIND_LABEL[kind]} {_band(p)} ({said})")
        note = _notes(metas.get(label, {}))
        row += [f"{first['decode_speedup']:.2f}x", f"{first['memory']:.2f}x", note or "-"]
        table.append(row)
        findings.append(f"{label}: keeps {' and '.join(parts)} of the accuracy above chance; decodes "
                        f"{first['decode_speedup']:.2f}x as fast as the base with {first['memory']:.2f}x its weight "
                        f"memory" + (f"; {note}" if note else "") + ".")
    findings += _speed_finding(points)
    return findings, table


def _speed_finding(points: list[dict]) -> list[str]:
    """Which faster-than-base option keeps the most of each kind, and what decodes slower than the base."""
    out = []
    for kind in ("generate", "multiple_choice"):
        faster = [p for p in points if p["kind"] == kind and p["decode_speedup"] > 1.0 and p["retention"] == p["retention"]]
        if faster:
            best = max(faster, key=lambda p: p["retention"])
            whole = "; none of them keeps all of it" if all(p["hi"] < 1.0 for p in faster) else ""
            out.append(f"Of the options that decode faster than the base, {best['label']} keeps the most "
                       f"{KIND_LABEL[kind]} accuracy above chance ({_band(best)}, {best['decode_speedup']:.2f}x)"
                       f"{whole}.")
    slower = sorted({p["label"] for p in points if p["decode_speedup"] < 1.0})
    if slower:
        out.append(f"Slower than the base here: {', '.join(slower)} (decode speed measured on this machine).")
    return out


TABLE_HEADERS = ["method", "classification: adjusted [95%]", "generative: adjusted [95%]", "decode speedup",
                 "weight memory", "note"]
