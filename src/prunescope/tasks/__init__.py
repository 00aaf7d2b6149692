"""Task specs and the built-in task families.

``get_task(name)`` resolves a registry name (``arith_add_2d_mc``), an lm-evaluation-harness task
(``lmeval:hellaswag``) or a user task file (``my_task.yaml``); ``task_names()`` lists the registry.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from prunescope.tasks.spec import TASKS, Item, Kind, Task, register_task
from prunescope.tasks import arithmetic, brackets, copying, gsm8k  # noqa: F401  (registration)

try:  # HumanEval registers itself when its module is present
    from prunescope.tasks import humaneval  # noqa: F401
except ImportError:
    pass

__all__ = ["Item", "Kind", "TASKS", "Task", "get_task", "register_task", "task_names"]


def get_task(name: str | Task, *, data: str | Path | None = None) -> Task:
    """The Task called ``name``: a registered name, ``lmeval:<task>``, or a path to a YAML task file.

    ``data`` (a file or folder) is passed to tasks that read a dataset (GSM8K); other tasks ignore it.
    Unknown names raise a UsageError suggesting the nearest ones.
    """
    if isinstance(name, Task):
        return name
    if name.startswith("lmeval:"):
        from prunescope.tasks.lmeval import lmeval_task
        return lmeval_task(name[len("lmeval:"):])
    if name.endswith((".yaml", ".yml")):
        from prunescope.tasks.user import load_user_task
        return load_user_task(name)
    factory = TASKS.get(name)
    if data is not None and "data" in inspect.signature(factory).parameters:
        return factory(data=data)
    return factory()


def task_names() -> list[str]:
    """All registered task names, sorted."""
    return TASKS.names()
