"""The machine a benchmark ran on, as a JSON-ready dict: CPU model and cores, memory, devices, driver,
Python / torch / CUDA / cuDNN / CuPy / Ray versions, and (for Ray) the cluster's resources."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..engine.local import cpu_count


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    """Total physical memory (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def nvidia_driver() -> str:
    """The NVIDIA driver version ("" without one): /proc/driver/nvidia/version, else nvidia-smi."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def package_version(*names: str) -> str:
    """The installed version of the first of ``names`` that is installed ("" if none)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def devices() -> list[dict[str, Any]]:
    """This machine's CUDA devices: name, memory, compute capability."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory),
                    "capability": f"{p.major}.{p.minor}"})
    return out


def ray_cluster() -> dict[str, Any]:
    """The running Ray cluster's nodes and resources ({} when Ray is not initialised)."""
    try:
        import ray
    except ImportError:
        return {}
    if not ray.is_initialized():
        return {}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return {"nodes": len(nodes), "cpus": float(res.get("CPU", 0)), "gpus": float(res.get("GPU", 0)),
            "accelerators": sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))}


def describe() -> dict[str, Any]:
    """This machine (the driver's, for Ray; see :func:`ray_cluster` for the cluster)."""
    return {
        "host": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_model(), "cores": cpu_count(), "logical_cpus": os.cpu_count() or 0,
        "memory_bytes": memory_bytes(), "devices": devices(), "driver": nvidia_driver(),
        "salient": __version__, "torch": torch.__version__, "cuda": torch.version.cuda or "",
        "cudnn": str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
        "cupy": package_version("cupy-cuda13x", "cupy-cuda12x", "cupy"), "ray": package_version("ray"),
        "torch_threads": torch.get_num_threads(), "ray_cluster": ray_cluster(),
    }


def one_line(m: dict[str, Any]) -> str:
    """A one-line summary of :func:`describe`'s dict."""
    devs = ", ".join(d["name"] for d in m.get("devices", [])) or "no GPU"
    gpu = f"driver {m['driver']}, CUDA {m['cuda']}" if m.get("driver") else f"CUDA build {m.get('cuda') or '-'}"
    cupy = f", CuPy {m['cupy']}" if m.get("cupy") else ""
    ray = m.get("ray_cluster") or {}
    cluster = (f"; Ray {m['ray']}: {ray['nodes']} nodes, {ray['cpus']:g} CPUs, {ray['gpus']:g} GPUs"
               if ray else "")
    return (f"{m.get('cpu')} ({m.get('cores')} cores, {m.get('memory_bytes', 0) / 2**30:.0f} GiB), {devs}, {gpu}, "
            f"torch {m.get('torch')}{cupy}, salient {m.get('salient')}{cluster}")
