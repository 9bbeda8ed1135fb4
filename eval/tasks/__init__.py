"""Task registry: one small module per SuperGLUE task."""
from eval.tasks.base import Task
from eval.tasks.boolq import BOOLQ
from eval.tasks.cb import CB
from eval.tasks.rte import RTE

TASKS: dict[str, Task] = {t.name: t for t in (BOOLQ, CB, RTE)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
