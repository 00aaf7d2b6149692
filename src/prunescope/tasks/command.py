"""``prunescope tasks``: list the tasks with their kind, computed chance and matched partner; with
``--check``, audit them for surface cues (tasks/audit.py)."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field

HELP = ("List the evaluation tasks: name, kind (multiple_choice / generate), chance computed from the items "
        "(the best answer-blind strategy), matched partner, description. --check audits tasks (built-in "
        "names or your task.yaml files) with a uniform null model and length/position/answer heuristics; "
        "exit 1 when one beats chance.")


@dataclass
class Config:
    names: list[str] = field(default_factory=list, flag="names",
                             help="tasks to show or check (registered names or task.yaml files; default: all built-in)")
    kind: str = field("all", help="show only this kind of task", choices=["all", "multiple_choice", "generate"])
    check: bool = field(False, help="audit the tasks without a real model; exit 1 when a heuristic beats chance "
                                    "beyond its 95%% Wilson interval, a choice is a token prefix of another, or a "
                                    "matched pair renders different contexts")
    limit: int = field(200, help="items per task for the chance column and the audit")
    seed: int = field(0, help="item seed")
    tokenizer: str = field("auto", help="tokenizer for --check: auto (the default model's when cached, else "
                                        "byte-level), bytes, or a model folder / hub id")
    data: str | None = field(None, help="dataset file or folder for tasks that read one (gsm8k)")


def _listing(config: Config, tasks) -> int:
    from prunescope.errors import UsageError
    from prunescope.tasks.chance import chance_of

    rows = []
    for task in tasks:
        if config.kind not in ("all", task.kind):
            continue
        try:
            value, strategy = chance_of(task.kind, task.items(config.limit, seed=config.seed))
            chance = f"{value:.2f} {strategy}"
        except UsageError:  # a task that reads data not given here (gsm8k), or lm-eval's own
            chance = "from items at run time"
        pair = "-" if not task.pair else task.pair + ("" if task.matched else " (not matched)")
        rows.append((task.name, task.kind, chance, pair, task.description))
    head = ("task", "kind", f"chance ({config.limit} items)", "pair", "description")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("\nAlso: lmeval:<task>[:N] (any lm-evaluation-harness task, N-shot; optional extra), "
          "lmeval:path/to/task.yaml (a local lm-eval task file) and path/to/task.yaml (user tasks).")
    return 0


def run(config: Config) -> int:
    from prunescope.tasks import get_task, task_names
    from prunescope.errors import UsageError

    if config.limit < 1:
        raise UsageError(f"--limit must be a positive number of items, got {config.limit}")
    names = config.names or task_names()
    tasks = [get_task(n, data=config.data) for n in names]
    if not config.check:
        return _listing(config, tasks)
    from prunescope.tasks.audit import audit_task, format_rows, null_model, resolve_tokenizer

    tokenizer, what = resolve_tokenizer(config.tokenizer)
    model = null_model(tokenizer)
    rows = [audit_task(t, tokenizer, model, limit=config.limit, seed=config.seed, data=config.data)
            for t in tasks if config.kind in ("all", t.kind)]
    print(f"tokenizer: {what}; null model: uniform next-token distribution; a heuristic fails when its 95% "
          f"Wilson interval lies above chance")
    print(format_rows(rows))
    return 1 if any(r.get("problems") for r in rows) else 0
