"""Launching the kernels of :mod:`.source`: the launcher contract, the CuPy launcher and the NVRTC
compile check. CuPy is imported only when a launcher or the check is used.

A launcher is a callable ``launch(name, n, args)``: run kernel ``name`` (one of
:data:`.source.NAME_EXPRESSIONS`) over ``n`` elements with ``args``, a tuple of torch tensors (passed as
pointers, any dtype; the kernels take float32 inputs, int64 indices and outputs in their storage type),
Python ints (``long long``) and floats (``float``). Kernels loop grid-stride, so any grid covers ``n``.
"""

from __future__ import annotations

import numbers
from functools import cache
from typing import Any, Protocol

import torch

from .source import NAME_EXPRESSIONS, OPTIONS, SOURCE

THREADS = 256  # per block
MAX_BLOCKS = 1 << 16  # grid-stride loops cover the rest


class Launcher(Protocol):
    def __call__(self, name: str, n: int, args: tuple) -> None: ...


def arg_kinds(name: str, args: tuple, device_type: str) -> list[str]:
    """Each argument's kind for the kernel's parameter list: "tensor" (a pointer; it must be on a
    ``device_type`` device), "int" (``long long``) or "float" (``float``)."""
    kinds = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != device_type:
                raise ValueError(f"kernel {name}: a tensor on {a.device}, not on a {device_type} device")
            kinds.append("tensor")
        elif isinstance(a, numbers.Integral):
            kinds.append("int")
        elif isinstance(a, numbers.Real):
            kinds.append("float")
        else:
            raise TypeError(f"kernel {name}: cannot pass a {type(a).__name__}")
    return kinds


def arch_flag(arch: str) -> str:
    """``-arch=sm_XY`` from "sm_90", "90" or "compute_90"."""
    digits = arch.rsplit("_", 1)[-1]
    if not digits.isdigit():
        raise ValueError(f"not a CUDA architecture: {arch!r} (e.g. 'sm_90')")
    return f"-arch=sm_{digits}"


def compile_check(arch: str, source: str = SOURCE) -> dict[str, str]:
    """Compile every instantiation of ``source`` through NVRTC for ``arch`` (no device needed): the
    mangled symbol of each name expression. Raises ``cupy.cuda.compiler.CompileException`` on an error."""
    from cupy.cuda import compiler

    prog = compiler._NVRTCProgram(source, "salient_kernels.cu", (), (), name_expressions=list(NAME_EXPRESSIONS),
                                  method="cubin")
    _, mapping = prog.compile((arch_flag(arch), *OPTIONS))
    return dict(mapping)


@cache
def _module() -> Any:
    import cupy

    return cupy.RawModule(code=SOURCE, options=OPTIONS, name_expressions=list(NAME_EXPRESSIONS))


def _stream(cupy: Any, stream: torch.cuda.Stream, index: int) -> Any:
    """torch's ``stream`` as a CuPy stream: by the CUDA stream protocol (CuPy 14), else by its handle."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, index)


_AS_INT16 = (torch.bfloat16, torch.float16)  # DLPack consumers need not know bf16: pass the bits


class CupyLauncher:
    """Kernels from one ``cupy.RawModule`` (compiled lazily, once per process) on torch's current CUDA
    stream; tensors cross zero-copy by DLPack."""

    def __call__(self, name: str, n: int, args: tuple) -> None:
        kinds = arg_kinds(name, args, "cuda")
        if n <= 0:
            return
        import cupy
        import numpy as np

        device = next(a.device for a, kind in zip(args, kinds, strict=True) if kind == "tensor")
        index = device.index if device.index is not None else torch.cuda.current_device()
        with cupy.cuda.Device(index), _stream(cupy, torch.cuda.current_stream(index), index):
            kernel = _module().get_function(name)
            packed = []
            for a, kind in zip(args, kinds, strict=True):
                if kind == "tensor":
                    a = a.detach()
                    packed.append(cupy.from_dlpack(a.view(torch.int16) if a.dtype in _AS_INT16 else a))
                else:
                    packed.append(np.int64(a) if kind == "int" else np.float32(a))
            blocks = max(1, min(-(-n // THREADS), MAX_BLOCKS))
            kernel((blocks,), (THREADS,), tuple(packed))

    def __repr__(self) -> str:
        return "<cupy launcher>"
