"""The study's plan: every step in order, each with the inputs that make its identity and the work it does.

A new grid axis adds its steps here: one ``Step`` per unit of work, naming the steps it reads from in
``after`` (``prunescope.study.steps``); the work itself is a ``StudyRun`` stage.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from prunescope.io import write_json
from prunescope.study.config import recovery_variants
from prunescope.study.stages import ITERATIVE, PER_COUNT, call_evaluate, scoring_plan
from prunescope.study.runner import cell_name
from prunescope.study.steps import Step

if TYPE_CHECKING:
    from prunescope.study.runner import StudyRun


def plan_steps(run: StudyRun) -> list[Step]:
    """Every step of ``run``'s study in order, each with the inputs that make its identity."""
    cfg, total, out = run.config, run.num_layers(), run.out
    counts = run.removal_counts(total)
    common, evals = run.common_inputs(), run.eval_inputs()
    items = len(cfg.tasks) * (cfg.limit or 200)  # the work of one evaluation, for estimates
    steps = [Step("baseline", "eval baseline", {**common, **evals},
                  [out / "baseline/metrics.json", out / "baseline/samples.jsonl"], run.run_baseline, work=items)]
    score_steps: dict[tuple[str, int | None], Step] = {}
    for crit, k, file in scoring_plan(cfg.criteria, sorted(set(counts.values()))):
        path = out / "scores" / file
        label = f"score {crit}" + (f" (removing {k})" if crit in PER_COUNT | ITERATIVE else "")
        inputs = {**common, "criterion": crit, "num_layers": k, "scoring": dict(cfg.scoring)}
        if crit == "greedy_task" and "tasks" not in cfg.scoring:
            inputs["tasks"] = list(cfg.tasks)  # it steers by the study's own tasks
        step = Step(f"scores/{file}", label, inputs, [path], lambda c=crit, k=k, p=path: run.run_scores(c, k, p))
        steps.append(step)
        score_steps[(crit, k)] = step

    def scores_for(crit: str, k: int) -> Step:
        return score_steps.get((crit, k)) or next(s for (c, _), s in score_steps.items() if c == crit)

    for crit in cfg.criteria:
        for r in cfg.ratios:
            cell = out / "cells" / cell_name(crit, r)
            dep = scores_for(crit, counts[r])
            steps.append(Step(f"cells/{cell.name}", f"eval {crit} r={r:g} ({counts[r]} of {total} layers)",
                              {**common, **evals, "criterion": crit, "ratio": r, "removed": counts[r],
                               "after": {dep.key: dep.identity}},
                              [cell / "metrics.json", cell / "samples.jsonl", cell / "prunescope.json"],
                              lambda c=crit, r=r, d=cell: run.run_cell(c, r, counts[r], total, d), work=items))
    for crit, r in cfg.recovered_cells():
        dep = scores_for(crit, counts[r])
        firsts: dict[str, tuple[Step, Path]] = {}  # per method, the first loss's step: the token budget
        for label, method, loss in recovery_variants(cfg.recovery):
            rdir = out / "cells" / cell_name(crit, r) / f"recovery-{label}"
            inputs = {**common, **evals, "criterion": crit, "ratio": r, "method": method,
                      "recovery": dict(cfg.recovery.settings), "after": {dep.key: dep.identity}}
            budget_from = None
            if loss is not None:
                inputs["loss"] = loss
                if method in firsts and run.equal_tokens_derived():
                    first_step, budget_from = firsts[method]
                    inputs["after"][first_step.key] = first_step.identity
            step = Step(f"{rdir.parent.name}/{rdir.name}", f"recover {label} {crit} r={r:g}", inputs,
                        [rdir / "metrics.json", rdir],
                        lambda c=crit, r=r, m=method, d=rdir, lo=loss, b=budget_from:
                        run.run_recovery(c, counts[r], m, d, loss=lo, budget_from=b))
            firsts.setdefault(method, (step, rdir))
            steps.append(step)
    if cfg.efficiency.enabled:
        eff = {**common, "efficiency": asdict(cfg.efficiency)}
        base_step = Step("efficiency/base", "efficiency base", eff, [out / "baseline/efficiency.json"],
                         run.run_base_efficiency)
        steps.append(base_step)
        for k in sorted(set(counts.values())):
            pairs = [(c, r) for c in cfg.criteria for r in cfg.ratios if counts[r] == k]
            cells = [out / "cells" / cell_name(c, r) for c, r in pairs]
            dep = scores_for(pairs[0][0], k)  # measured on the first cell's removal set
            steps.append(Step(f"efficiency/k{k}", f"efficiency {k} of {total} layers removed",
                              {**eff, "cells": [c.name for c in cells],
                               "after": {base_step.key: base_step.identity, dep.key: dep.identity}},
                              [c / "efficiency.json" for c in cells], lambda cs=cells: run.run_efficiency(cs),
                              extra_done=lambda cs=cells: all((c / "efficiency.json").is_file() for c in cs)))
    steps += method_steps(run, common, evals, items, steps)
    if cfg.ablation.enabled:
        abl = {**common, "data": cfg.data, "ablation": {"limit": cfg.ablation.limit, "tasks": run.ablation_tasks()}}
        base_path = out / "ablation" / "base.json"
        ablation_items = len(run.ablation_tasks()) * cfg.ablation.limit
        steps.append(Step("ablation/base", "ablation base", abl, [base_path],
                          lambda p=base_path: write_json(p, run._ablation_eval(p)), work=ablation_items))
        for layer in range(total):
            path = out / "ablation" / f"layer-{layer:03d}.json"
            steps.append(Step(f"ablation/layer-{layer:03d}", f"ablation layer {layer}", {**abl, "layer": layer},
                              [path], lambda i=layer, p=path: run.run_ablation_layer(i, p), work=ablation_items))
    return steps

def method_steps(run: StudyRun, common: dict, evals: dict, items: int, before: list[Step]) -> list[Step]:
    """One step per compression-method cell (the ``methods:`` axis, see study/methods_axis.py)."""
    from prunescope.study.methods_axis import method_cell_name, method_specs, run_method_cell, study_scores_file
    cfg, out = run.config, run.out
    after = {s.key: s.identity for s in before if s.key in ("baseline", "efficiency/base")}
    by_key = {s.key: s for s in before}
    steps = []
    for spec in method_specs(cfg.methods, cfg.ratios):
        cell = out / "cells" / method_cell_name(spec)
        deps = dict(after)
        reused = study_scores_file(run, spec, exists=False)
        if reused is not None and f"scores/{reused.name}" in by_key:  # the method reuses that scoring run
            dep = by_key[f"scores/{reused.name}"]
            deps[dep.key] = dep.identity
        marks = [cell / "efficiency.json"] if cfg.efficiency.enabled else []
        evaluate = lambda model, d: call_evaluate(run.stages.evaluate, model, run.tokenizer, cfg.tasks,  # noqa: E731
                                                  out_dir=d, **run.eval_kwargs(baseline=True))
        steps.append(Step(f"cells/{cell.name}", f"compress and eval {method_cell_name(spec)}",
                          {**common, **evals, "method": spec, "efficiency": asdict(cfg.efficiency), "after": deps,
                           "scoring": dict(cfg.scoring)},
                          [*marks, cell / "metrics.json", cell / "samples.jsonl", cell / "prunescope.json"],
                          lambda s=spec, d=cell, ev=evaluate: run_method_cell(run, s, d, evaluate_fn=ev),
                          work=items))
    return steps
