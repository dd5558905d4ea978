"""Runs methods: workers hold model replicas, the scheduler drives method generators."""

from ..item import Item
from ..queries import QueryFailure
from .engine import EXECUTORS, Engine, Summary, engine_for, explain, make_executor
from .executor import Done, Executor, Failed, Lost, Unit
from .local import LocalExecutor
from .scheduler import Scheduler, Task
from .worker import Worker, autotune_batch

__all__ = [
    "EXECUTORS", "Done", "Engine", "Executor", "Failed", "Item", "LocalExecutor", "Lost", "QueryFailure", "Scheduler",
    "Summary", "Task", "Unit", "Worker", "autotune_batch", "engine_for", "explain", "make_executor",
]
