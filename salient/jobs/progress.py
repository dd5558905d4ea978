"""A progress bar for long work: items done / total, forward passes/s, errors, ETA (tqdm).

Quiet when stderr is not a terminal (logs, CI, pipes). The total may be unknown when the bar
starts (a lazy source being counted on another thread): ``set_total`` fills it in later, and the
bar shows the ETA from then on.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class Progress:
    """``on_forward(n)`` counts forward passes (the engine's ``on_progress``); ``item_done(error)``
    advances the bar by one item."""

    def __init__(self, total: int | None = None, initial: int = 0, enabled: bool | None = None,
                 desc: str = "explaining", min_postfix_seconds: float = 0.5):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True,
                        disable=not self.enabled, smoothing=0.05)
        self.passes = 0
        self.errors = 0
        self.t0 = time.perf_counter()
        self._pending_total: int | None = None
        self._last_postfix = 0.0
        self._every = min_postfix_seconds

    def set_total(self, total: int) -> None:
        """May be called from another thread: applied by the next update on the main thread."""
        self._pending_total = int(total)

    def on_forward(self, n: int) -> None:
        self.passes += int(n)
        self._refresh()

    def item_done(self, error: bool = False, n: int = 1) -> None:
        self.errors += int(error)
        self.bar.update(n)
        self._refresh()

    @property
    def rate(self) -> float:
        """Forward passes per second since the start."""
        return self.passes / max(time.perf_counter() - self.t0, 1e-9)

    def _refresh(self) -> None:
        if not self.enabled:
            return
        if self._pending_total is not None:
            self.bar.total = max(self._pending_total, self.bar.n)
            self._pending_total = None
            self.bar.refresh()
        now = time.perf_counter()
        if now - self._last_postfix >= self._every:
            self._last_postfix = now
            post: dict[str, Any] = {"passes/s": f"{self.rate:.0f}"}
            if self.errors:
                post["errors"] = self.errors
            self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        self._refresh()
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
