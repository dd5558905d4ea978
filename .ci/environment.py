"""Print what decides the last bits of the tests' numbers, so that a failure on another machine can be read:
the CPU, torch's CPU capability and BLAS, thread counts, and the versions of the numeric packages."""

import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return found.group(1) if found else platform.processor()
    except OSError:
        return platform.processor() or "unknown"


def main() -> None:
    import torch

    cfg = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", cfg)
    lapack = re.search(r"LAPACK_INFO=(\w+)", cfg)
    mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", cfg)
    rows = [
        ("cpu", f"{cpu_model()} ({os.cpu_count()} logical cores, {platform.machine()})"),
        ("torch cpu capability", torch.backends.cpu.get_cpu_capability()),
        ("torch blas / lapack", f"{blas.group(1) if blas else '?'} / {lapack.group(1) if lapack else '?'}"
                                + (f" (MKL {mkl.group(1)})" if mkl else "")),
        ("torch threads", f"intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}"),
        ("env", ", ".join(f"{k}={os.environ[k]}" for k in (
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
            "OPENBLAS_CORETYPE") if k in os.environ) or "no thread or kernel variables set"),
    ]
    try:
        from threadpoolctl import threadpool_info

        rows += [("numpy/scipy pools", "; ".join(
            f"{p.get('internal_api')} {p.get('version') or os.path.basename(p.get('filepath', ''))} "
            f"{p.get('architecture') or ''} threads={p.get('num_threads')}".replace("  ", " ")
            for p in threadpool_info()))]
    except ImportError:
        pass
    for name in ("python", "numpy", "scipy", "torch", "gpytorch", "zarr", "ray"):
        try:
            rows.append((name, platform.python_version() if name == "python" else version(name)))
        except PackageNotFoundError:
            rows.append((name, "not installed"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
