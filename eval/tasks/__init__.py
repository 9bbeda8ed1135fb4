"""Task registry: one small module per SuperGLUE task."""
from lrpt.eval.tasks.base import EXAMPLE_KEYS, ClassificationTask, Task
from lrpt.eval.tasks.boolq import BOOLQ
from lrpt.eval.tasks.cb import CB
from lrpt.eval.tasks.copa import COPA
from lrpt.eval.tasks.multirc import MULTIRC
from lrpt.eval.tasks.record import RECORD
from lrpt.eval.tasks.rte import RTE
from lrpt.eval.tasks.wic import WIC
from lrpt.eval.tasks.wsc import WSC_TASK

# In the order of the SuperGLUE table.
TASKS: dict[str, Task] = {t.name: t for t in (BOOLQ, CB, COPA, MULTIRC, RECORD, RTE, WIC, WSC_TASK)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["EXAMPLE_KEYS", "TASKS", "ClassificationTask", "Task", "get_task"]
