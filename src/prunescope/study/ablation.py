"""The single-layer ablation's summary: per task and per kind, the accuracy drop when each layer alone is
skipped, with its paired bootstrap 95% interval; a layer is 'critical' for a kind only when the interval
of the kind's mean drop lies above 0."""
from __future__ import annotations

from pathlib import Path

from prunescope.io import read_json, write_json


def write_ablation_summary(folder: Path, total: int, *, limit: int, seed: int) -> None:
    """ablation/ablation.json: accuracy per layer skipped, per task, the drop from the base with its paired
    95% bootstrap interval, and per kind the mean drop over the kind's tasks with its interval."""
    from prunescope import stats
    base = read_json(folder / "base.json")
    layers = [read_json(folder / f"layer-{i:03d}.json") for i in range(total)]
    tasks, per_kind = {}, {}
    for name, info in base["tasks"].items():
        accs = [m["tasks"][name]["accuracy"] for m in layers]
        entry = {"kind": info["kind"], "n": info.get("n"), "chance": info.get("chance"),
                 "base_accuracy": info["accuracy"], "accuracy": accs,
                 "drop": [info["accuracy"] - a for a in accs]}
        b_items = (base.get("items") or {}).get(name)
        l_items = [(m.get("items") or {}).get(name) for m in layers]
        if b_items and all(li and li["ids"] == b_items["ids"] for li in l_items):
            boots = []
            for li in l_items:
                p = stats.Paired(name, info["kind"], info.get("chance"), tuple(b_items["ids"]), b_items["correct"],
                                 li["correct"], seed=seed)
                boots.append(p.drop())
            entry["drop_lo"] = [stats.interval(b)[0] for _, b in boots]
            entry["drop_hi"] = [stats.interval(b)[1] for _, b in boots]
            per_kind.setdefault(info["kind"], []).append(boots)
        tasks[name] = entry
    kinds = {}
    for kind, task_boots in per_kind.items():
        means = [stats.mean_of([tb[i] for tb in task_boots]) for i in range(total)]
        kinds[kind] = {"drop": [m[0] for m in means], "lo": [stats.interval(m[1])[0] for m in means],
                       "hi": [stats.interval(m[1])[1] for m in means]}
        kinds[kind]["critical"] = [i for i in range(total) if kinds[kind]["lo"][i] > 0]
    write_json(folder / "ablation.json", {"limit": limit, "num_layers": total,
                                          "layers": list(range(total)), "tasks": tasks, "kinds": kinds,
                                          "level": stats.LEVEL})
