"""The report's words and table for compression methods beside depth pruning (the study's ``methods:`` axis).

Depth-pruning cells are compared with each other in the headline; a method cell (merge, width, quant,
speculative, ...) is a different way of spending the same budget, so it gets its own table and findings:
retention of each kind with its interval next to the measured decode speedup and weight memory. A method
is said to keep more (or less) of a kind than depth pruning only when its interval lies wholly above (or
below) the intervals of every depth-pruning criterion at that budget; otherwise the data cannot separate them.
Speed claims follow the same rule: an option is "faster" or "slower" than the base only when its speedup's
rank interval over rounds timed alongside the base excludes 1 (``prunescope.speed``); otherwise it is not
distinguishable from the base's speed on this machine.
"""
from __future__ import annotations

from prunescope.report.tables import KIND_LABEL, fmt_pct
from prunescope.speed import fmt_speedup

SAME_SPEED = "not distinguishable from the base's speed on this machine"

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
    if meta.get("method") == "merge":
        groups = "; ".join(f"{' '.join(map(str, m['merged']))} into {m['into']}" for m in meta["merges"])
        return f"LaCo merged layers {groups} (merge_layers={meta.get('settings', {}).get('merge_layers')})"
    if meta.get("method") == "speculative":
        rate = (meta.get("drafting") or {}).get("acceptance_rate")
        accepted = f"; {100 * rate:.0f}% of the draft's tokens accepted" if rate is not None else ""
        return f"lossless by construction (the full model verifies every token); only speed changes{accepted}"
    if meta.get("method") == "quant" and meta.get("settings", {}).get("scheme") in ("int4", "nf4"):
        return f"computes in {meta.get('compute_dtype', 'bfloat16')}, the 4-bit kernels' dtype"
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
        row += [_speed(first), f"{first['memory']:.2f}x", note or "-"]
        table.append(row)
        findings.append(f"{label}: keeps {' and '.join(parts)} of the accuracy above chance; decodes "
                        f"{_speed(first)} as fast as the base ({_speed_word(first)}) with {first['memory']:.2f}x "
                        f"its weight memory" + (f"; {note}" if note else "") + ".")
    findings += _speed_finding(points)
    return findings, table


def _speed(p: dict) -> str:
    """``1.23x [1.05, 1.40]``: the point's decode speedup with its rank interval, where it has one."""
    iv = {"lo": p["speed_lo"], "hi": p["speed_hi"]} if p.get("speed_lo") is not None else None
    return fmt_speedup(p["decode_speedup"], iv)


def _speed_word(p: dict) -> str:
    return {"faster": "faster", "slower": "slower"}.get(p.get("speed"), SAME_SPEED)


def _speed_finding(points: list[dict]) -> list[str]:
    """Which faster-than-base option keeps the most of each kind, and what decodes slower than the base: an option
    counts as faster (slower) only when its speedup interval excludes 1, and is named as keeping the most only
    when its retention interval lies above every other faster option's."""
    out = []
    for kind in ("generate", "multiple_choice"):
        faster = [p for p in points if p["kind"] == kind and p.get("speed") == "faster" and p["retention"] == p["retention"]]
        if not faster:
            continue
        best = max(faster, key=lambda p: p["retention"])
        others = [p for p in faster if p["label"] != best["label"]]
        whole = "; none of them keeps all of it" if all(p["hi"] < 1.0 for p in faster) else ""
        if not others:
            out.append(f"Only {best['label']} decodes measurably faster than the base ({_speed(best)}); it keeps "
                       f"{_band(best)} of {KIND_LABEL[kind]} accuracy above chance.")
        elif best["lo"] == best["lo"] and all(best["lo"] > p["hi"] for p in others):
            out.append(f"Of the options that decode measurably faster than the base, {best['label']} keeps the most "
                       f"{KIND_LABEL[kind]} accuracy above chance ({_band(best)}, {_speed(best)}){whole}.")
        else:
            names = ", ".join(sorted({p["label"] for p in faster}))
            out.append(f"Of the options that decode measurably faster than the base ({names}), the data cannot say "
                       f"which keeps the most {KIND_LABEL[kind]} accuracy above chance: their intervals overlap"
                       f"{whole}.")
    slower = sorted({p["label"] for p in points if p.get("speed") == "slower"})
    if slower:
        out.append(f"Slower than the base here: {', '.join(slower)} (decode speed measured on this machine).")
    unclear = [p for p in points if p.get("speed") not in ("faster", "slower")]
    spans = sorted({p["label"] for p in unclear if p.get("speed_lo") is not None and p.get("speed_paired", True)})
    bare = sorted({p["label"] for p in unclear} - set(spans))
    if spans:
        out.append(f"Decode speed {SAME_SPEED}: {', '.join(spans)} (the speedup's interval over rounds timed "
                   f"alongside the base includes 1).")
    if bare:
        out.append(f"No speed claim for {', '.join(bare)}: no interval (rounds not timed alongside the base, or "
                   f"fewer than 3 of each).")
    return out


TABLE_HEADERS = ["method", "classification: adjusted [95%]", "generative: adjusted [95%]", "decode speedup [90%]",
                 "weight memory", "note"]
