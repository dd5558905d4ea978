"""The CPU twin of the CuPy launcher: the kernels' source compiled by g++ and run on CPU tensors.

A host shim makes the CUDA source plain C++ (``__global__`` and ``__device__`` vanish, ``blockIdx`` and
friends are globals set before each call, ``__float_as_uint`` is a ``memcpy``); a generated table of
the name expressions' addresses finds the template instantiations. The library is cached in the temp
directory by a hash of what it is built from. A launch calls the kernel once per (block, thread) of a
small grid, so every kernel's grid-stride decomposition runs as it does on a GPU; the results do not
depend on the grid.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from functools import cache

from .launch import arg_kinds
from .source import NAME_EXPRESSIONS, SOURCE

_SCALARS = {"int": lambda a: ctypes.c_longlong(int(a)), "float": lambda a: ctypes.c_float(float(a))}
CXX_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-DSALIENT_HOST")

HOST_SHIM = r"""
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct salient_dim3 { unsigned int x, y, z; };
static salient_dim3 blockIdx, threadIdx, blockDim, gridDim;
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, sizeof u); return u; }
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, sizeof f); return f; }
extern "C" void salient_twin_thread(unsigned int block, unsigned int thread, unsigned int blocks,
                                    unsigned int threads) {
    blockIdx.x = block; threadIdx.x = thread; gridDim.x = blocks; blockDim.x = threads;
    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0; gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
}
"""


def host_source(source: str = SOURCE) -> str:
    """``source`` as a host C++ translation unit: the shim, the source, and ``salient_kernels``, the
    addresses of :data:`.source.NAME_EXPRESSIONS` in order."""
    table = ",\n    ".join(f"(void*)&{name}" for name in NAME_EXPRESSIONS)
    return f'{HOST_SHIM}\n{source}\nextern "C" void* salient_kernels[] = {{\n    {table}\n}};\n'


def compiler() -> str | None:
    """The C++ compiler the twin uses, or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


@cache
def _library(source: str = SOURCE) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CPU twin of the CuPy kernels needs a C++ compiler (g++)")
    code = host_source(source)
    digest = hashlib.sha256("\0".join((cxx, *CXX_FLAGS, code)).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"salient-twin-{digest}.so")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory() as tmp:
            src, lib = os.path.join(tmp, "twin.cpp"), os.path.join(tmp, "twin.so")
            with open(src, "w") as f:
                f.write(code)
            done = subprocess.run([cxx, *CXX_FLAGS, src, "-o", lib, "-lm"], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"g++ failed on the kernels' source:\n{done.stderr[-4000:]}")
            os.replace(lib, path)  # atomic: concurrent builders leave one whole library
    return ctypes.CDLL(path)


# No GPU in CI: the same source runs on the CPU, so its index math is tested against the torch reference.
class TwinLauncher:
    """Runs the kernels on CPU tensors, calling each kernel for every (block, thread) of a
    ``blocks`` x ``threads`` grid in turn (one launch at a time: the grid lives in globals)."""

    _lock = threading.Lock()

    def __init__(self, blocks: int = 3, threads: int = 5):
        self.blocks, self.threads = blocks, threads
        lib = _library()
        table = ctypes.cast(lib.salient_kernels, ctypes.POINTER(ctypes.c_void_p))
        self._addresses = {name: table[i] for i, name in enumerate(NAME_EXPRESSIONS)}
        self._set_thread = lib.salient_twin_thread
        self._set_thread.argtypes = (ctypes.c_uint,) * 4
        self._functions: dict[tuple, ctypes._CFuncPtr] = {}

    def __call__(self, name: str, n: int, args: tuple) -> None:
        kinds = arg_kinds(name, args, "cpu")
        if n <= 0:
            return
        values = [ctypes.c_void_p(a.data_ptr()) if kind == "tensor" else _SCALARS[kind](a)
                  for a, kind in zip(args, kinds, strict=True)]
        key = (name, *(type(v) for v in values))
        if key not in self._functions:
            self._functions[key] = ctypes.CFUNCTYPE(None, *key[1:])(self._addresses[name])
        kernel = self._functions[key]
        with self._lock:
            for b in range(self.blocks):
                for t in range(self.threads):
                    self._set_thread(b, t, self.blocks, self.threads)
                    kernel(*values)

    def __repr__(self) -> str:
        return f"<CPU twin launcher {self.blocks}x{self.threads}>"
