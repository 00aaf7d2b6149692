"""``build_report``: report.md, report.html and figures/*.png from a run folder's files alone."""
from __future__ import annotations

import math
from pathlib import Path

from prunescope.errors import UsageError
from prunescope.io import read_json, write_text
from prunescope.report import figures
from prunescope.report.findings import findings, recommend
from prunescope.report.html import Doc
from prunescope.report.methods_section import TABLE_HEADERS, methods_section
from prunescope.report.recovery_runs import CAPTION as RECOVERY_CAPTION
from prunescope.report.recovery_runs import HEADERS as RECOVERY_HEADERS
from prunescope.report.recovery_runs import recovery_rows
from prunescope.report.tables import (KINDS, aggregate, baseline_rows, fmt_num, fmt_pct, kind_label, ordered,
                                      read_results_csv, spearman, study_info, write_results_csv)
from prunescope.study.config import recovery_variants


def _f(x, digits: int = 3) -> str:
    return fmt_num(x, f".{digits}f")


def _p(x) -> str:
    return fmt_pct(x, missing="")


def load_artifacts(run_dir: Path) -> dict:
    """Everything the report uses, read from files."""
    if not (run_dir / "results.csv").is_file() and not (run_dir / "baseline" / "metrics.json").is_file():
        raise UsageError(f"{run_dir} holds no study results (no results.csv or baseline/metrics.json); "
                         f"run `prunescope study --out {run_dir}` first")
    info = study_info(run_dir)
    if (run_dir / "baseline" / "metrics.json").is_file():
        write_results_csv(run_dir)  # the metrics and samples files are the source; results.csv follows them
    rows = read_results_csv(run_dir / "results.csv")
    cfg = info.get("config", {})
    cells = {}
    for meta_path in sorted((run_dir / "cells").glob("*/prunescope.json")) if (run_dir / "cells").is_dir() else []:
        meta = read_json(meta_path)
        eff_path = meta_path.parent / "efficiency.json"
        cells[(meta["criterion"], float(meta["ratio"]))] = {
            "meta": meta, "efficiency": read_json(eff_path) if eff_path.is_file() else None}
    num_layers = info.get("num_layers") or next((c["meta"]["num_layers_before"] for c in cells.values()), None)
    scores = {}
    for path in sorted((run_dir / "scores").glob("*.json")) if (run_dir / "scores").is_dir() else []:
        data = read_json(path)
        crit = data["criterion"]
        k = data.get("config", {}).get("num_layers_arg") or 0
        if crit not in scores or k > scores[crit][0]:  # per-count criteria: show the largest count's profile
            scores[crit] = (k, data)
    ablation_path = run_dir / "ablation" / "ablation.json"
    base_eff = run_dir / "baseline" / "efficiency.json"
    # the depth-pruning grid; other compression methods (rows with another method) have a section of their own
    depth = [r for r in rows if r.get("method", "depth") in ("depth", "none")]
    criteria = ordered([r["criterion"] for r in depth if r["criterion"] != "none"], cfg.get("criteria"))
    return {
        "unfinished": unfinished_cells(run_dir, cfg), "run_dir": run_dir,
        "info": info, "config": cfg, "rows": rows, "cells": cells, "num_layers": num_layers or 1,
        "scores": {c: scores[c][1] for c in ordered(scores, cfg.get("criteria"))},
        "ablation": read_json(ablation_path) if ablation_path.is_file() else None,
        "base_efficiency": read_json(base_eff) if base_eff.is_file() else None,
        "criteria": criteria,
        "ratios": sorted({r["ratio"] for r in depth if r["criterion"] != "none"}),
        "methods": ordered([r["recovery"] for r in rows if r["recovery"] != "none"],
                           [label for label, _, _ in recovery_variants(cfg.get("recovery") or {})]),
        "tasks": ordered([r["task"] for r in rows], cfg.get("tasks")),
    }


def unfinished_cells(run_dir: Path, cfg: dict) -> list[str]:
    """Cells the study's config plans (criteria x ratios, recovered cells) whose metrics.json is missing."""
    criteria, ratios = cfg.get("criteria") or [], cfg.get("ratios") or []
    plan = cfg.get("recovery") or {}
    missing = []
    for crit in criteria:
        for ratio in ratios:
            cell = run_dir / "cells" / f"{crit}-r{float(ratio):g}"
            if not (cell / "metrics.json").is_file():
                missing.append(f"{crit} r={float(ratio):g}")
            if (plan.get("criteria") is None or crit in plan["criteria"]) and \
                    (plan.get("ratios") is None or ratio in plan["ratios"]):
                for method, _, _ in recovery_variants(plan):
                    if not (cell / f"recovery-{method}" / "metrics.json").is_file():
                        missing.append(f"{crit} r={float(ratio):g} + {method} recovery")
    abl = cfg.get("ablation") or {}
    if abl.get("enabled") and not (run_dir / "ablation" / "ablation.json").is_file():
        missing.append("single-layer ablation")
    return missing


def agreement(scores: dict[str, dict], removal: dict[str, list[int]], k: int) -> dict:
    """Pairwise Spearman correlation of the criteria's scores and the overlap of their removal sets."""
    crits = list(scores)
    pairs = []
    for i, a in enumerate(crits):
        for b in crits[i + 1:]:
            pairs.append({"a": a, "b": b, "spearman": spearman(scores[a]["scores"], scores[b]["scores"]),
                          "shared": len(set(removal.get(a, [])) & set(removal.get(b, [])))})
    return {"criteria": crits, "pairs": pairs, "k": k}


def removal_sets(art: dict) -> tuple[int, dict[str, list[int]]]:
    """The removal sets at the largest tested ratio, in removal order (from the cells, else the scores)."""
    k = max((c["meta"]["num_layers_before"] - c["meta"]["num_layers_after"] for c in art["cells"].values()), default=0)
    out = {}
    for crit, data in art["scores"].items():
        cell = next((c for (cr, _), c in art["cells"].items() if cr == crit and
                     c["meta"]["num_layers_before"] - c["meta"]["num_layers_after"] == k), None)
        chosen = set(cell["meta"]["removed_layers"]) if cell else set(data["order"][:k])
        out[crit] = [layer for layer in data["order"] if layer in chosen]
    return k, out


def build_report(run_dir: str | Path, *, retention_target: float | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` (self-contained) and ``figures/*.png`` into ``run_dir`` from its
    artifact files only (results.csv or the metrics files, scores, efficiency, ablation, study.json).
    Returns the paths written."""
    run_dir = Path(run_dir)
    art = load_artifacts(run_dir)
    cfg, rows, L = art["config"], art["rows"], art["num_layers"]
    target = retention_target or (cfg.get("report") or {}).get("retention_target") or 0.9
    criteria, methods = art["criteria"], art["methods"]
    fig_dir = run_dir / "figures"
    figs: list[tuple[str, str]] = []
    if criteria:
        figures.retention_figure(rows, criteria=criteria, methods=methods, num_layers=L, target=target,
                                 path=fig_dir / "retention.png")
        figs.append(("figures/retention.png", "Chance-adjusted retention ((accuracy - chance) / (base - chance)) "
                     "against the fraction of layers removed, per criterion. Thick lines: mean over the tasks of each "
                     "kind, with paired-bootstrap 95% bands; thin lines: single tasks; dashed open markers: after "
                     "recovery; dotted at 0: chance level; dashed grey: the retention target."))
    k, removal = removal_sets(art)
    agree = agreement(art["scores"], removal, k) if art["scores"] else None
    if art["scores"]:
        figures.importance_figure({c: d["scores"] for c, d in art["scores"].items()}, removal, k=max(k, 1),
                                  path=fig_dir / "importance.png")
        figs.append(("figures/importance.png", f"Layer importance by criterion (min-max normalised; 0 = removed "
                     f"first). Bottom: the first {k} layers each criterion removes, numbered in removal order; shaded "
                     f"columns are layers the criteria disagree on."))
    if art["ablation"]:
        figures.ablation_figure(art["ablation"], path=fig_dir / "ablation.png")
        figs.append(("figures/ablation.png", "Accuracy drop (percentage points) when one layer alone is skipped, "
                     "per task (point estimates; the table below gives each kind's drop with its 95% interval)."))
    efficiency = {key: c["efficiency"] for key, c in art["cells"].items() if c["efficiency"]}
    if efficiency and any("speedup" in e for e in efficiency.values()):
        figures.frontier_figure(rows, efficiency, criteria=criteria, methods=methods, target=target,
                                path=fig_dir / "frontier.png")
        figs.append(("figures/frontier.png", "Measured decode speedup against chance-adjusted retention per task kind (95% bars; horizontal: "
                     "the speedup's 90% rank interval over rounds timed alongside the base); one marker "
                     "per criterion, open markers after recovery; dotted verticals: ideal speedups from the FLOP "
                     "share of the removed blocks."))

    if any(c["meta"].get("method") for c in art["cells"].values()):
        from prunescope.report.frontier import frontier_points, plot_frontier
        if plot_frontier(frontier_points(run_dir), fig_dir / "frontier_methods.png"):
            figs.append(("figures/frontier_methods.png", "Compression methods at measured cost: chance-adjusted "
                         "retention (95% bars) against decode speedup (left; horizontal bars: its 90% rank interval over "
                         "rounds timed alongside the base) and weight memory (right), relative to "
                         "the base; one marker per method and setting, dashed: the Pareto front."))

    doc = Doc(f"prunescope study: {cfg.get('name', run_dir.name)}")
    _intro(doc, art, target)
    _unfinished(doc, art)
    doc.heading("How to read this", 3)
    doc.para(HOW_TO_READ + (HOW_TO_READ_ABLATION if art["ablation"] else ""))
    doc.heading("Findings")
    doc.bullets(findings(rows, criteria=criteria, ratios=art["ratios"], methods=methods, num_layers=L, target=target,
                         efficiency=efficiency, agreement=agree, ablation=art["ablation"]))
    method_findings, art["method_table"] = _methods(run_dir, art)
    if method_findings:
        doc.heading("Other compression at the same budget", 3)
        doc.bullets(method_findings)
    doc.heading("Figures")
    for path, caption in figs:
        doc.figure(path, caption)
    _recommendation_table(doc, rows, criteria, methods, target)
    _tables(doc, art, agree, removal, k)
    _provenance(doc, art)
    md = write_text(run_dir / "report.md", doc.markdown())
    html = write_text(run_dir / "report.html", doc.html(run_dir))
    return {"markdown": md, "html": html, **{Path(p).stem: run_dir / p for p, _ in figs}}


def _intro(doc: Doc, art: dict, target: float) -> None:
    cfg = art["config"]
    base = baseline_rows(art["rows"])
    kinds = {k: [t for t in art["tasks"] if t in base and base[t]["kind"] == k] for k in KINDS}
    # the items each task really had (a pool smaller than the limit caps n)
    task_text = "; ".join(f"{kind_label(k)}: {', '.join(_with_n(ts, base))}"
                          for k, ts in kinds.items() if ts)
    grid = (f"{len(art['criteria'])} criteria ({', '.join(art['criteria'])}) x {len(art['ratios'])} ratios "
            f"({', '.join(f'{r:g}' for r in art['ratios'])})")
    if art["methods"]:
        grid += f", recovery: {', '.join(art['methods'])}"
    others = sorted({r["criterion"] for r in art["rows"] if r.get("method", "depth") not in ("depth", "none")})
    if others:
        grid += f"; other compression: {', '.join(others)}"
    doc.para(f"Model **{cfg.get('model', '?')}** ({art['num_layers']} layers). Tasks ({task_text}). "
             f"Grid: {grid}. Retention target: {target:.0%} of the accuracy above chance.")


HOW_TO_READ = (
    "Raw retention is accuracy divided by the base model's accuracy. It flatters multiple choice, which cannot "
    "fall below chance (a 4-way task keeps 25% for free) while generation can fall to 0, so the headline uses "
    "chance-adjusted retention, (accuracy - chance) / (base accuracy - chance): 1 keeps everything the base knew "
    "above chance, 0 is guessing. Chance is computed from each task's items (the best answer-blind strategy). "
    "A task whose base accuracy is within 0.10 of chance gets no adjusted retention (its denominator is noise) "
    "and stays out of the headline. Intervals are 95% paired bootstrap intervals over items: the base and "
    "the pruned model answered the same items, so each resample draws items once for both, and the interval "
    "includes the base model's own uncertainty. The gap is classification minus generation mean adjusted "
    "retention in one cell; a cell is called 'generation kept less' or 'classification kept less' only when "
    "the gap's interval excludes 0, otherwise 'not distinguishable'. Speed follows the same rule: the base is "
    "timed again alongside each cell, rounds interleaved, and a cell decodes 'faster' or 'slower' only when its "
    "speedup's exact rank interval over the rounds (each side 5%; with 3 rounds of each, every cell round beat, "
    "or lost to, every base round) excludes 1; otherwise it is not distinguishable from the base's speed on "
    "this machine.")
HOW_TO_READ_ABLATION = " The same rule names a layer as critical in the single-layer ablation."


def _unfinished(doc: Doc, art: dict) -> None:
    """Say which planned cells have no results yet instead of silently leaving rows out."""
    missing = art.get("unfinished") or []
    if missing:
        doc.para(f"**Unfinished:** {len(missing)} planned step(s) have no results yet and are missing from every "
                 f"table and figure: {', '.join(missing)}. Run the study again to finish them.")


def _recommendation_table(doc: Doc, rows, criteria, methods, target) -> None:
    recs = recommend(rows, criteria=criteria, methods=methods, target=target)
    if not recs:
        return
    doc.heading(f"Recommended maximum pruning ratio (retention >= {target:.0%})")
    doc.table(["task kind", "criterion", "recovery", "max ratio", "layers removed", "retention there", "ratios tested"],
              [[kind_label(r["kind"]), r["criterion"], r["recovery"],
                f"{r['max_ratio']:g}" if r["max_ratio"] is not None else "none qualifies", r["layers_removed"],
                _p(r["retention"]), ", ".join(f"{x:g}" for x in r["tested"])] for r in recs])


def _tables(doc: Doc, art: dict, agree: dict | None, removal: dict, k: int) -> None:
    rows, L = art["rows"], art["num_layers"]
    base = baseline_rows(rows)
    doc.heading("Tables")
    doc.heading("Baseline", 3)
    doc.table(["task", "kind", "n", "accuracy", "95% CI", "chance"],
              [[t, kind_label(b["kind"]), b["n"], _f(b["accuracy"]), f"{_f(b['ci_lo'])}-{_f(b['ci_hi'])}",
                _f(b["chance"])] for t, b in ((t, base[t]) for t in art["tasks"] if t in base)])
    agg = aggregate(rows)
    kinds = [kd for kd in KINDS if any(key[3] == kd for key in agg)]
    doc.heading("Headline: retention by task kind", 3)
    summary = []
    for crit in art["criteria"]:
        for ratio in art["ratios"]:
            for rec in ["none", *art["methods"]]:
                cells = [agg.get((crit, ratio, rec, kd)) for kd in kinds]
                if not any(cells):
                    continue
                first = next(c for c in cells if c)
                summary.append([crit, f"{ratio:g}", f"{first['layers_removed']}/{L}", rec] +
                               [f"{_p(c['retention'])} [{_p(c['lo'])}, {_p(c['hi'])}] (raw {_p(c['raw'])})" if c else ""
                                for c in cells] +
                               [_gap(first), first["verdict"] or "-"])
    doc.table(["criterion", "ratio", "removed", "recovery"] + [f"{kind_label(kd)}: adjusted [95%] (raw)" for kd in kinds]
              + ["gap cls - gen [95%]", "reading"], summary,
              caption="Mean chance-adjusted retention over the tasks of each kind that have one, with its paired "
                      "bootstrap 95% interval; raw = mean accuracy / base accuracy. Gap: classification minus "
                      "generation; the reading follows its interval.")
    if art.get("method_table"):
        doc.heading("Compression methods", 3)
        doc.table(TABLE_HEADERS, art["method_table"],
                  caption="Chance-adjusted retention per kind with its paired bootstrap 95% interval; decode speedup and "
                          "weight memory measured against the base. 'More/less than depth pruning' is said only when "
                          "the intervals do not overlap.")
    recovered = recovery_rows(art["run_dir"]) if art.get("run_dir") else []
    if recovered:
        doc.heading("Recovery runs", 3)
        doc.table(RECOVERY_HEADERS, recovered, caption=RECOVERY_CAPTION)
    doc.heading("Every result", 3)
    doc.table(["criterion", "ratio", "removed layers", "recovery", "task", "kind", "n", "accuracy", "95% CI",
               "chance", "retention [95%]", "adjusted [95%]"],
              [[r["criterion"], f"{r['ratio']:g}", " ".join(map(str, r["removed"])) or "-",
                r["recovery"] + (f" ({r['recovery_data']})" if r.get("recovery_data") else ""), r["task"],
                kind_label(r["kind"]), r["n"], _f(r["accuracy"]), f"{_f(r['ci_lo'])}-{_f(r['ci_hi'])}",
                _f(r["chance"]), _band(r["retention"], r.get("retention_lo"), r.get("retention_hi")),
                _band(r.get("retention_adj"), r.get("retention_adj_lo"), r.get("retention_adj_hi"))
                or f"- ({r.get('adj_note')})"] for r in rows],
              caption="Also in results.csv (one row per cell and task). Intervals: paired bootstrap over items.")
    effs = [("base", None, art["base_efficiency"])] if art["base_efficiency"] else []
    effs += [(c, r, cell["efficiency"]) for (c, r), cell in art["cells"].items() if cell["efficiency"]]
    if effs:
        doc.heading("Efficiency", 3)
        doc.table(["model", "layers", "parameters (M)", "block params (M)", "peak memory (MiB)", "prefill (ms)",
                   "decode (tok/s)", "decode speedup [90%]", "ideal speedup", "prefill speedup"],
                  [[c if r is None else f"{c} r={r:g}", e["num_layers"], _f(e["parameters"]["total"] / 1e6, 2),
                    _f(e["parameters"]["blocks"] / 1e6, 2), _f(e["memory"]["peak_bytes"] / 2 ** 20, 1),
                    _f(e["prefill_ms"], 1), _f(e["decode_tokens_per_s"], 1),
                    _decode_speedup(e), _f(e.get("speedup", {}).get("ideal"), 2) or "1.00",
                    _f(e.get("speedup", {}).get("prefill"), 2) or "1.00"] for c, r, e in effs],
                  caption=_efficiency_note(effs[0][2]))
    if agree and len(agree["criteria"]) > 1:
        doc.heading("Where the criteria disagree", 3)
        crits = agree["criteria"]
        lookup = {(p["a"], p["b"]): p for p in agree["pairs"]} | {(p["b"], p["a"]): p for p in agree["pairs"]}
        doc.table(["Spearman"] + crits, [[a] + ["1.00" if a == b else _f(lookup[(a, b)]["spearman"], 2) for b in crits]
                                         for a in crits], caption="Rank correlation of the layer scores.")
        headers, rows, caption = removal_table(removal, crits, k)
        doc.table(headers, rows, caption=caption or None)
    if art["ablation"]:
        ab = art["ablation"]
        tasks = list(ab["tasks"])
        doc.heading("Single-layer ablation (accuracy drop in points)", 3)
        kinds_ab = ab.get("kinds") or {}

        def kind_cell(kd, i):
            v = kinds_ab[kd]
            mark = " critical" if v["lo"][i] > 0 else ""
            return f"{_f(100 * v['drop'][i], 0)} [{_f(100 * v['lo'][i], 0)}, {_f(100 * v['hi'][i], 0)}]{mark}"

        doc.table(["layer"] + tasks + [f"{kind_label(kd)} mean [95%]" for kd in kinds_ab],
                  [[layer] + [_f(100 * ab["tasks"][t]["drop"][i], 0) for t in tasks] +
                   [kind_cell(kd, i) for kd in kinds_ab] for i, layer in enumerate(ab["layers"])],
                  caption=f"{ab.get('limit')} items per task; base accuracy "
                          + ", ".join(f"{t} {_f(ab['tasks'][t]['base_accuracy'], 2)}" for t in tasks)
                          + ". 'critical': the kind's mean drop has a paired 95% interval above 0.")


def removal_table(removal: dict[str, list[int]], crits: list[str], k: int) -> tuple[list[str], list[list[str]], str]:
    """Headers, rows and caption of the table of each criterion's first ``k`` removals. Whether each layer is
    removed by every criterion is a column only when the answer varies; a column reading "no no no" in
    every row says one thing, so it is said once, in the caption."""
    shared = [[all(layer in removal.get(o, []) for o in crits) for layer in removal.get(c, [])] for c in crits]
    flat = {x for marks in shared for x in marks}
    headers = ["criterion", f"first {k} layers removed (in order)"]
    rows = [[c, " ".join(map(str, removal.get(c, [])))] for c in crits]
    if len(flat) > 1:
        return ([*headers, "removed by every criterion?"],
                [[*row, " ".join("yes" if x else "no" for x in marks)] for row, marks in zip(rows, shared)], "")
    caption = (f"Every criterion removes the same {k} layers." if flat == {True} else
               f"No layer is among the first {k} of every criterion.")
    return headers, rows, caption


def _band(x, lo, hi) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return _p(x)
    return f"{_p(x)} [{_p(lo)}, {_p(hi)}]"


def _gap(a: dict) -> str:
    if a["gap"] != a["gap"]:
        return "-"
    return f"{fmt_num(100 * a['gap'], '+.0f')} pts [{fmt_num(100 * a['gap_lo'], '+.0f')}, {fmt_num(100 * a['gap_hi'], '+.0f')}]"


def _decode_speedup(e: dict) -> str:
    """``1.23x [1.05, 1.40] faster``: the measured speedup, its rank interval and what it allows (prunescope.speed)."""
    from prunescope.speed import decode_interval, fmt_speedup, speed_verdict
    if "speedup" not in e:
        return "1.00"  # the base itself
    iv = decode_interval(e)
    verdict = speed_verdict(iv)
    return fmt_speedup(e["speedup"].get("decode"), iv) + ("" if verdict == "not distinguishable" else f" {verdict}")


def _efficiency_note(e: dict) -> str:
    s = e.get("settings", {})
    return (f"Median of {s.get('repeats')} rounds after {s.get('warmup')} warm-up: prefill of {s.get('prompt_tokens')} "
            f"tokens, then {s.get('new_tokens')} greedy tokens from the KV cache, batch {s.get('batch_size')}, "
            f"{e.get('device')} {e.get('dtype')}. Peak memory: {e['memory']['method']}. Cells removing the same number "
            f"of layers share one measurement. Ideal speedup = FLOPs per token before / after (blocks and LM head). "
            f"Decode speedup interval: exact rank interval over the rounds, the base timed again alongside each cell "
            f"with rounds interleaved (each side 5%: with 3 rounds, 'faster' means every cell round beat every base "
            f"round); 'faster'/'slower' only when it excludes 1.")


def _provenance(doc: Doc, art: dict) -> None:
    import yaml
    info = art["info"]
    doc.heading("Provenance")
    attempts = 1 + len(info.get("resumed") or [])
    compute = ""
    if info.get("seconds"):
        compute = f" ({info['seconds']:.0f} s of compute" + (f", summed over its {attempts} attempts)" if attempts > 1
                                                             else ")")
    items = [f"started {info.get('started', '?')}, finished {info.get('finished', '?')}{compute}"]
    if info.get("resumed"):
        items.append(f"the run was interrupted and resumed {len(info['resumed'])} time(s): {', '.join(info['resumed'])}")
    if info.get("seeds"):
        items.append("seeds: " + ", ".join(f"{k} {v}" for k, v in info["seeds"].items()))
    if info.get("versions"):
        items.append("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info.get("host"):
        items.append("host: " + ", ".join(f"{k} {v}" for k, v in info["host"].items() if v is not None))
    if isinstance(info.get("isolation"), dict):  # prunescope.sandbox.isolation(), when programs ran
        items.append("model-written code ran in: " + info["isolation"].get("summary", "?"))
    doc.bullets(items)
    if art["config"]:
        doc.para("The study's configuration:")
        doc.code(yaml.safe_dump(art["config"], sort_keys=False))


def _methods(run_dir: Path, art: dict) -> tuple[list[str], list[list[str]]]:
    """Findings and table rows for the study's compression-method cells (empty without any)."""
    from prunescope.report.frontier import frontier_points

    if all(r.get("method", "depth") in ("depth", "none") for r in art["rows"]):
        return [], []
    # a cell's record, with what its timing measured of a speculative draft (the acceptance rate)
    metas = {(f"{c} r={r:g}" if r else c): {**cell["meta"], "drafting": (cell["efficiency"] or {}).get("speculative")}
             for (c, r), cell in art["cells"].items()}
    return methods_section(frontier_points(run_dir), metas)


def _with_n(tasks: list[str], base: dict) -> list[str]:
    return [f"{t} (n={base[t]['n']})" for t in tasks]
