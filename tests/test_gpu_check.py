"""benchmarks/gpu_check.py, the one-shot GPU check, runs on a CPU in ``--smoke`` mode (its CuPy rows then check
the kernels' CPU twin against torch), and keeps Ray and the store out of its import path: the GPU machine it is
made for has neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, runpy, sys
sys.argv = ["gpu_check.py", "--smoke", "--only", "masks,kernels"]
try:
    runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "imported": sorted(m for m in ("ray", "zarr", "pyarrow", "pandas", "av")
                                                   if m in sys.modules)}))
"""


def test_gpu_check_smoke_runs_on_a_cpu_without_ray_or_the_store():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "imported": []}
    diffs = {line.split(":")[0]: float(line.split(")")[1].split()[0]) for line in proc.stdout.splitlines()
             if line.startswith(("masks 2-D: twin vs torch", "masks 3-D: twin vs torch"))}
    assert diffs.keys() == {"masks 2-D", "masks 3-D"}  # the kernels' CPU twin was checked ...
    assert max(diffs.values()) <= 1e-6  # ... and agrees with torch (smoke rows print no verdict of their own)
    assert "sections failed" in proc.stdout and " 0 sections failed" in proc.stdout
