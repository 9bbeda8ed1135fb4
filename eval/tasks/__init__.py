"""Task registry: one small module per SuperGLUE task."""
from .base import EXAMPLE_KEYS, ClassificationTask, Task
from .boolq import BOOLQ
from .cb import CB
from .copa import COPA
from .multirc import MULTIRC
from .record import RECORD
from .rte import RTE
from .wic import WIC
from .wsc import WSC_TASK

# In the order of the SuperGLUE table.
TASKS: dict[str, Task] = {t.name: t for t in (BOOLQ, CB, COPA, MULTIRC, RECORD, RTE, WIC, WSC_TASK)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["EXAMPLE_KEYS", "TASKS", "ClassificationTask", "Task", "get_task"]
