"""Findings in words, computed from the run's numbers (never hand-written).

No sentence is stronger than its interval: "generation kept less" is said of a cell only when the paired
95% interval of the gap excludes 0; a layer is named as critical only when its drop's interval excludes 0;
a cut decodes "faster" only when its speedup's interval over rounds timed alongside the base excludes 1.
Retention in findings is chance-adjusted ((accuracy - chance) / (base - chance)).
"""
from __future__ import annotations

from statistics import mean

from prunescope.report.tables import KINDS, aggregate, baseline_rows, fmt_num, fmt_pct, kind_label
from prunescope.stats import CLS_LESS, GEN_LESS, UNCLEAR


def _pct(x: float | None) -> str:
    return fmt_pct(x, "n/a")


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return _pct(lo) if round(lo, 2) == round(hi, 2) else f"{_pct(lo)} to {_pct(hi)}"


def _ci(a: dict) -> str:
    if a["lo"] != a["lo"]:
        return _pct(a["retention"])
    return f"{_pct(a['retention'])} [{_pct(a['lo'])}, {_pct(a['hi'])}]"


def gap_findings(agg: dict) -> list[str]:
    """The kind comparison as counts of verdicts: a cell counts as 'generation kept less' only when its
    paired 95% interval of (classification - generation) mean adjusted retention lies above 0."""
    cells = {}
    for (c, r, rec, kind), a in agg.items():
        cells.setdefault((c, r, rec), a)
    counts = {GEN_LESS: 0, CLS_LESS: 0, UNCLEAR: 0}
    missing = 0
    for a in cells.values():
        if a["verdict"] in counts:
            counts[a["verdict"]] += 1
        else:
            missing += 1
    total = sum(counts.values())
    if not total:
        return ["No cell has a chance-adjusted retention for both kinds, so the kinds are not compared."]
    text = (f"Comparing kinds cell by cell (paired 95% interval of classification minus generation mean "
            f"chance-adjusted retention): generation kept less in {counts[GEN_LESS]}, classification kept less in "
            f"{counts[CLS_LESS]}, not distinguishable in {counts[UNCLEAR]} of {total} pruned or recovered cells")
    if missing:
        text += f" ({missing} more without both kinds)"
    return [text + "."]


def ablation_findings(ablation: dict, kinds: list[str]) -> list[str]:
    """Per kind, the layers whose single-layer drop (mean over the kind's tasks) has a paired 95% interval
    above 0; when none has, the sentence says the data cannot tell."""
    out = []
    n = ablation.get("limit")
    for kind in kinds:
        info = (ablation.get("kinds") or {}).get(kind)
        if not info:
            if any(v["kind"] == kind for v in ablation["tasks"].values()):
                out.append(f"Skipping one layer alone: the ablation has no paired intervals for "
                           f"{kind_label(kind)} tasks, so the data cannot tell which layer matters most.")
            continue
        critical = [(layer, d, lo, hi) for layer, d, lo, hi in zip(ablation["layers"], info["drop"], info["lo"],
                                                                    info["hi"]) if lo is not None and lo > 0]
        if not critical:
            out.append(f"Skipping one layer alone: no layer's drop on {kind_label(kind)} tasks has a 95% interval "
                       f"excluding 0 ({n} items per task), so the data cannot tell which layer matters most.")
            continue
        critical.sort(key=lambda c: -c[1])
        layer, d, lo, hi = critical[0]
        names = ", ".join(str(c[0]) for c in sorted(critical))
        out.append(f"Skipping one layer alone: for {kind_label(kind)} tasks, {len(critical)} of "
                   f"{len(ablation['layers'])} layers cost accuracy beyond their 95% interval (layer"
                   f"{'s' * (len(critical) > 1)} {names}); the largest drop is layer {layer}, {fmt_num(100 * d, '.0f')} points "
                   f"[{fmt_num(100 * lo, '.0f')}, {fmt_num(100 * hi, '.0f')}] ({n} items per task; about {0.025 * len(ablation['layers']):.1f} "
                   f"layers would pass by chance alone).")
    return out


def recommend(rows: list[dict], *, criteria: list[str], methods: list[str], target: float) -> list[dict]:
    """Per kind, criterion and recovery: the largest tested ratio whose mean retention meets ``target``.

    Without recovery every smaller tested ratio must meet it too (so a lucky large ratio after a failing
    small one is not recommended); with recovery only the recovered ratios are considered.
    """
    agg = aggregate(rows)
    out = []
    kinds = [k for k in KINDS if any(key[3] == k for key in agg)]
    for kind in kinds:
        for recovery in ["none", *methods]:
            for crit in criteria:
                keys = sorted((k for k in agg if k[0] == crit and k[2] == recovery and k[3] == kind), key=lambda k: k[1])
                if not keys:
                    continue
                best = None
                for key in keys:
                    if agg[key]["retention"] >= target:
                        best = key
                    elif recovery == "none":
                        break
                out.append({"kind": kind, "criterion": crit, "recovery": recovery,
                            "max_ratio": best[1] if best else None,
                            "layers_removed": agg[best]["layers_removed"] if best else 0,
                            "retention": agg[best]["retention"] if best else None,
                            "tested": [k[1] for k in keys]})
    return out


def findings(rows: list[dict], *, criteria: list[str], ratios: list[float], methods: list[str], num_layers: int,
             target: float, efficiency: dict | None = None, agreement: dict | None = None,
             ablation: dict | None = None) -> list[str]:
    """Sentences that state what the numbers show."""
    agg = aggregate(rows)
    base = baseline_rows(rows)
    kinds = [k for k in KINDS if any(b["kind"] == k for b in base.values())]
    out: list[str] = []

    parts = []
    for kind in kinds:
        tasks = [b for b in base.values() if b["kind"] == kind]
        parts.append(f"{mean(b['accuracy'] for b in tasks):.0%} on {kind_label(kind)} tasks "
                     f"(chance {mean((b['chance'] or 0) for b in tasks):.0%}, {len(tasks)} task{'s' * (len(tasks) > 1)})")
    out.append("At baseline the model scores " + " and ".join(parts) + ".")
    weak = [t for t, b in base.items() if b.get("adj_note")]
    if weak:
        listed = ", ".join(f"{t} ({base[t]['adj_note']})" for t in weak)
        out.append(f"No chance-adjusted retention for {listed}: "
                   f"{'it stays' if len(weak) == 1 else 'they stay'} out of the headline and the kind comparison.")
    unclear = [t for t, b in base.items() if not b.get("adj_note") and b["ci_lo"] is not None
               and b["chance"] is not None and b["ci_lo"] <= b["chance"]]
    if unclear:
        out.append(f"Baseline accuracy is not clearly above chance on {', '.join(unclear)} (the 95% interval reaches "
                   f"the chance level), so retention on {'it' if len(unclear) == 1 else 'them'} says little.")

    for ratio in sorted(ratios):
        per_kind = {}
        for kind in kinds:
            vals = {c: agg[(c, ratio, "none", kind)] for c in criteria if (c, ratio, "none", kind) in agg}
            if vals:
                per_kind[kind] = vals
        if not per_kind:
            continue
        k = next(iter(next(iter(per_kind.values())).values()))["layers_removed"]
        kept = " and ".join(f"{_span([v['retention'] for v in vals.values()])} of {kind_label(kind)} accuracy above chance"
                            for kind, vals in per_kind.items())
        scope = f"across {len(criteria)} criteria" if len(criteria) > 1 else criteria[0]
        out.append(f"Removing {ratio:.0%} of layers ({k} of {num_layers}) keeps {kept} ({scope}; chance-adjusted "
                   f"retention, intervals in the table).")

    for crit in criteria:
        for ratio in sorted(ratios):
            for method in methods:
                if not any((crit, ratio, method, kind) in agg for kind in kinds):
                    continue
                before = " and ".join(f"{kind_label(kind)} {_ci(agg[(crit, ratio, 'none', kind)])}"
                                      for kind in kinds if (crit, ratio, "none", kind) in agg)
                after = " and ".join(f"{_ci(agg[(crit, ratio, method, kind)])}" for kind in kinds
                                     if (crit, ratio, method, kind) in agg)
                out.append(f"With {crit} at {ratio:.0%}, {method} recovery brings chance-adjusted retention from "
                           f"{before} to {after} respectively.")

    if len(kinds) == 2:
        out += gap_findings(agg)

    for kind in kinds:
        recs = [r for r in recommend(rows, criteria=criteria, methods=methods, target=target) if r["kind"] == kind]
        plain = [r for r in recs if r["recovery"] == "none"]
        if not plain:
            continue
        best = max(plain, key=lambda r: (r["max_ratio"] or 0, r["retention"] or 0))
        if best["max_ratio"] is None:
            text = (f"To keep at least {target:.0%} of {kind_label(kind)} accuracy above chance (point estimates), none "
                    f"of the tested ratios "
                    f"(smallest {min(ratios):.0%}) qualifies without recovery")
        else:
            text = (f"To keep at least {target:.0%} of {kind_label(kind)} accuracy above chance (point estimates), "
                    f"remove at most "
                    f"{best['max_ratio']:.0%} of layers ({best['layers_removed']} of {num_layers}, with {best['criterion']})")
        recovered = [r for r in recs if r["recovery"] != "none"]
        if recovered:
            ok = [r for r in recovered if r["max_ratio"] is not None]
            tested = sorted({x for r in recovered for x in r["tested"]})
            if ok:
                r = max(ok, key=lambda r: r["max_ratio"])
                text += (f"; after {r['recovery']} recovery, {r['max_ratio']:.0%} meets it ({r['criterion']}; "
                         f"recovered ratios tested: {', '.join(f'{x:.0%}' for x in tested)})")
            else:
                text += f"; no recovered cell meets it either (recovered ratios tested: " \
                        f"{', '.join(f'{x:.0%}' for x in tested)})"
        out.append(text + ".")

    if agreement and len(agreement.get("criteria", [])) > 1:
        pairs = agreement["pairs"]
        valid = [p for p in pairs if p["spearman"] == p["spearman"]]
        if valid:
            low = min(valid, key=lambda p: p["spearman"])
            out.append(f"The criteria rank layers with mean Spearman correlation {mean(p['spearman'] for p in valid):.2f}; "
                       f"{low['a']} and {low['b']} agree least ({low['spearman']:.2f}, {low['shared']} of "
                       f"{agreement['k']} layers removed by both at {agreement['k']} removed).")

    if ablation:
        out += ablation_findings(ablation, kinds)

    if efficiency:
        measured = [(e["num_layers"], e["speedup"]) for e in efficiency.values() if "speedup" in e]
        if measured:
            from prunescope.speed import fmt_speedup, speed_verdict
            fewest, s = min(measured, key=lambda m: m[0])
            iv = s.get("decode_interval")  # a claim only when its interval over rounds timed alongside excludes 1
            said = {"faster": "decodes faster than the base", "slower": "decodes slower than the base"}.get(
                speed_verdict(iv), "is not distinguishable from the base's decode speed on this machine")
            out.append(f"Keeping {fewest} of {num_layers} layers {said} ({fmt_speedup(s['decode'], iv)}; "
                       f"ideal {s['ideal']:.2f}x after the embedding and head's share; {s['layer_ratio']:.2f}x by "
                       f"layer count) with {1 - 1 / s['parameters']:.0%} fewer parameters.")
    return out
