"""What users run: job specs, sources, resume, progress (the store they write is :mod:`salient.store`).

Names load on first use, so ``salient --help`` (which imports ``salient.jobs.commands``) does not
import zarr, pyarrow or pydantic.
"""

from importlib import import_module

_WHERE = {"Store": "..store", "item_key": "..store", "read_map": "..store", "read_results": "..store",
          "run_job": ".runner", "JobSpec": ".spec", "load_spec": ".spec"}  # the store lives in salient.store

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
