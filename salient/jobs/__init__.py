"""What users run: job specs, sources, the store, resume, progress.

Names load on first use, so ``salient --help`` (which imports ``salient.jobs.commands``) does not
import zarr, pyarrow or pydantic.
"""

from importlib import import_module

_WHERE = {"Store": "store", "item_key": "store", "read_map": "store", "read_results": "store",
          "run_job": "runner", "JobSpec": "spec", "load_spec": "spec"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
