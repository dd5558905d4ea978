"""What users run: job specs, sources, the store, resume, progress."""

from .store import Store, read_results

__all__ = ["Store", "read_results"]
