"""LocalExecutor: one in-process Worker; the default, and it never imports Ray."""

from __future__ import annotations

from typing import Any

from ..methods.queries import Query
from ..models import Model
from .tasks import Item
from .worker import Worker


class LocalExecutor:
    """Evaluates queries synchronously on one worker in this process."""

    kind = "local"

    def __init__(self, model: Model, device: str | None = None, batch_size: int | None = None, **_: Any):
        self.worker = Worker(model, device=device, batch_size=batch_size)

    @property
    def batch_size(self) -> int:
        return self.worker.batch_size

    @property
    def n_workers(self) -> int:
        return 1

    def hold(self, item: Item) -> None:
        self.worker.put(item.id, item.x)

    def release(self, item_id: str) -> None:
        self.worker.drop(item_id)

    def evaluate(self, queries: list[Query]) -> list[Any]:
        return self.worker.run(queries)

    def stats(self) -> dict[str, Any]:
        return {"workers": 1, "n_forward": self.worker.n_forward, "busy_seconds": self.worker.busy_seconds}

    def close(self) -> None:
        pass
