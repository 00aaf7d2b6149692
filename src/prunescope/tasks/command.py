"""``prunescope tasks``: list the tasks with their kind and chance level."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field

HELP = "List the evaluation tasks: name, kind (multiple_choice / generate), chance level, description."


@dataclass
class Config:
    kind: str = field("all", help="show only this kind of task", choices=["all", "multiple_choice", "generate"])


def run(config: Config) -> int:
    from prunescope.tasks import get_task, task_names

    rows = []
    for name in task_names():
        task = get_task(name)
        if config.kind in ("all", task.kind):
            rows.append((name, task.kind, f"{task.chance:.2f}", task.description))
    widths = [max(len(r[i]) for r in rows + [("task", "kind", "chance", "")]) for i in range(3)]
    print(f"{'task':<{widths[0]}}  {'kind':<{widths[1]}}  {'chance':>{widths[2]}}  description")
    for name, kind, chance, desc in rows:
        print(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {chance:>{widths[2]}}  {desc}")
    print("\nAlso: lmeval:<task> (any lm-evaluation-harness task, optional extra), lmeval:path/to/task.yaml (a local "
          "lm-eval task file) and path/to/task.yaml (user tasks).")
    return 0
