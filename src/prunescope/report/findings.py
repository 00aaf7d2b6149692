"""Findings in words, computed from the run's numbers (never hand-written)."""
from __future__ import annotations

from statistics import mean

from prunescope.report.tables import KINDS, aggregate, baseline_rows, kind_label


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


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
    weak = [t for t, b in base.items() if b["ci_lo"] is not None and b["chance"] is not None and b["ci_lo"] <= b["chance"]]
    if weak:
        out.append(f"Baseline accuracy is not clearly above chance on {', '.join(weak)} (the 95% interval reaches the "
                   f"chance level), so retention on {'it' if len(weak) == 1 else 'them'} says little.")

    for ratio in sorted(ratios):
        per_kind = {}
        for kind in kinds:
            vals = {c: agg[(c, ratio, "none", kind)] for c in criteria if (c, ratio, "none", kind) in agg}
            if vals:
                best = max(vals, key=lambda c: vals[c]["retention"])
                per_kind[kind] = (mean(v["retention"] for v in vals.values()), best, vals[best]["retention"],
                                  next(iter(vals.values()))["layers_removed"])
        if not per_kind:
            continue
        k = next(iter(per_kind.values()))[3]
        kept = " and ".join(f"{_pct(v[0])} of {kind_label(kind)} accuracy" for kind, v in per_kind.items())
        best = "; ".join(f"best for {kind_label(kind)}: {v[1]} ({_pct(v[2])})" for kind, v in per_kind.items())
        scope = f"mean over {len(criteria)} criteria; {best}" if len(criteria) > 1 else criteria[0]
        out.append(f"Removing {ratio:.0%} of layers ({k} of {num_layers}) keeps {kept} ({scope}).")

    for crit in criteria:
        for ratio in sorted(ratios):
            for method in methods:
                if not any((crit, ratio, method, kind) in agg for kind in kinds):
                    continue
                before = " and ".join(f"{kind_label(kind)} {_pct(agg[(crit, ratio, 'none', kind)]['retention'])}"
                                      for kind in kinds if (crit, ratio, "none", kind) in agg)
                after = " and ".join(f"{_pct(agg[(crit, ratio, method, kind)]['retention'])}" for kind in kinds
                                     if (crit, ratio, method, kind) in agg)
                out.append(f"With {crit} at {ratio:.0%}, {method} recovery brings retention from {before} to {after} "
                           f"respectively.")

    if len(kinds) == 2:
        cls, gen = kinds
        pairs = [(agg[(c, r, rec, cls)]["retention"], agg[(c, r, rec, gen)]["retention"])
                 for (c, r, rec, kd) in agg if kd == cls and (c, r, rec, gen) in agg]
        if pairs:
            worse = sum(1 for a, b in pairs if b < a)
            out.append(f"Generative tasks kept less than classification tasks in {worse} of {len(pairs)} pruned or "
                       f"recovered cells (mean retention {_pct(mean(p[1] for p in pairs))} vs "
                       f"{_pct(mean(p[0] for p in pairs))}).")

    for kind in kinds:
        recs = [r for r in recommend(rows, criteria=criteria, methods=methods, target=target) if r["kind"] == kind]
        plain = [r for r in recs if r["recovery"] == "none"]
        if not plain:
            continue
        best = max(plain, key=lambda r: (r["max_ratio"] or 0, r["retention"] or 0))
        if best["max_ratio"] is None:
            text = (f"To keep at least {target:.0%} of {kind_label(kind)} accuracy, none of the tested ratios "
                    f"(smallest {min(ratios):.0%}) qualifies without recovery")
        else:
            text = (f"To keep at least {target:.0%} of {kind_label(kind)} accuracy, remove at most "
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
        for kind in kinds:
            tasks = [t for t, v in ablation["tasks"].items() if v["kind"] == kind]
            if not tasks:
                continue
            drops = [mean(ablation["tasks"][t]["drop"][i] for t in tasks) for i in range(len(ablation["layers"]))]
            worst = max(range(len(drops)), key=lambda i: drops[i])
            severe = sum(1 for d in drops if d >= 0.1)
            out.append(f"Skipping one layer alone: for {kind_label(kind)} tasks layer {ablation['layers'][worst]} matters "
                       f"most (mean drop {drops[worst] * 100:.0f} points); {severe} of {len(drops)} layers cost 10 "
                       f"points or more.")

    if efficiency:
        measured = [(e["num_layers"], e["speedup"]) for e in efficiency.values() if "speedup" in e]
        if measured:
            fewest, s = min(measured, key=lambda m: m[0])
            out.append(f"Keeping {fewest} of {num_layers} layers decodes {s['decode']:.2f}x as fast as the base "
                       f"(ideal {s['ideal']:.2f}x after the embedding and head's share; {s['layer_ratio']:.2f}x by "
                       f"layer count) with {1 - 1 / s['parameters']:.0%} fewer parameters.")
    return out
