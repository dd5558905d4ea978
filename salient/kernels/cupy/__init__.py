"""Fused CUDA kernels for CuPy (``pip install -e '.[gpu]'``): RISE masks blended straight into the model's
batch (2-D and space-time), their weighted sums, box pastes and insertion/deletion frames, as a backend
beside the torch reference (:class:`.backend.CupyKernels`). Importing this package does not import CuPy.

- :func:`available`: None where CuPy can run the kernels, else why not (one line);
- :func:`cupy_kernels`: the process-wide backend on the GPU; :func:`twin_kernels`: the same kernels on
  the CPU (:mod:`.twin`), for tests;
- :func:`compile_check`: compile every kernel through NVRTC for an architecture, without a device.
"""

from __future__ import annotations

from functools import cache

from .backend import CupyKernels
from .launch import CupyLauncher, compile_check
from .source import NAME_EXPRESSIONS, SOURCE


def available() -> str | None:
    """None when CuPy imports and it and torch see a CUDA device; otherwise the reason, one line."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install -e '.[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, no device: CUDARuntimeError
        count = 0
    if count == 0:
        return "CuPy sees no CUDA device"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU build of torch?)"
    return None


@cache
def cupy_kernels() -> CupyKernels:
    """The process-wide CuPy backend (its kernels compile on first use)."""
    return CupyKernels(CupyLauncher())


def twin_kernels(blocks: int = 3, threads: int = 5) -> CupyKernels:
    """The CuPy backend's kernels compiled for the CPU and run over a ``blocks`` x ``threads`` grid."""
    from .twin import TwinLauncher

    return CupyKernels(TwinLauncher(blocks, threads))


__all__ = ["NAME_EXPRESSIONS", "SOURCE", "CupyKernels", "available", "compile_check", "cupy_kernels", "twin_kernels"]
