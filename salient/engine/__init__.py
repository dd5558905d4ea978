"""Runs methods: workers hold model replicas, the scheduler drives method generators."""

from .engine import EXECUTORS, Engine, engine_for, explain, make_executor
from .scheduler import Scheduler, Task
from .tasks import Item
from .worker import QueryFailure, Worker, autotune_batch

__all__ = [
    "EXECUTORS", "Engine", "Item", "QueryFailure", "Scheduler", "Task", "Worker", "autotune_batch",
    "engine_for", "explain", "make_executor",
]
