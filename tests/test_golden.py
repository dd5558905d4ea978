"""Golden regression: every method's map (and two curves) on two photos and a seeded ResNet-18 must
not change by one bit (``tests/golden/make_golden.py`` defines the set and regenerates expected.json).

Rule: if this machine's fingerprint (CPU capability and model, torch, torchvision, numpy, BLAS, oneDNN)
equals the recorded one, every array's SHA-256 must match (any bit change fails). Else (AVX2 vs AVX-512
changes convolutions' last bits) non-adaptive maps and curves must match as 8 x 8 block means within
RTOL of each map's range, and BOREx/GP are skipped. Ray must equal local bit for bit on any machine.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from golden import make_golden as mg

RTOL = 1e-3  # of a map's range (max - min), for block means on another machine
EXECUTORS = ["local", pytest.param("ray", marks=pytest.mark.ray)]
_RUNS: dict[str, tuple[dict[str, np.ndarray], dict[str, dict], float]] = {}


@pytest.fixture(scope="module")
def expected() -> dict:
    if not mg.EXPECTED.is_file():
        pytest.fail(f"{mg.EXPECTED} is missing: run python tests/golden/make_golden.py")
    return json.loads(mg.EXPECTED.read_text())


def run(executor: str, request: pytest.FixtureRequest):
    """The golden set on ``executor``, computed once per test session (the Ray one in ``ray_session``)."""
    if executor not in _RUNS:
        if executor == "ray":
            request.getfixturevalue("ray_session")
        t0 = time.perf_counter()
        arrays, info = mg.compute(executor)
        _RUNS[executor] = (arrays, info, time.perf_counter() - t0)
        print(f"\ngolden set on {executor}: {_RUNS[executor][2]:.1f} s")
    return _RUNS[executor]


def same_machine(expected: dict) -> tuple[bool, str]:
    now, then = mg.fingerprint(), expected["fingerprint"]
    diff = [f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(then))
            if now.get(k) != then.get(k)]
    return not diff, "; ".join(diff)


def problems(expected: dict, arrays: dict[str, np.ndarray], info: dict[str, dict], keys: list[str],
             strict: bool) -> list[str]:
    """One line per array that does not match: bits (strict) or block means beyond RTOL of the range."""
    out = []
    for k in keys:
        e, a = expected["arrays"][k], arrays.get(k)
        if a is None:
            out.append(f"{k}: not computed")
            continue
        if list(a.shape) != e["shape"] or str(a.dtype) != e["dtype"]:
            out.append(f"{k}: {a.dtype}{list(a.shape)}, expected {e['dtype']}{e['shape']}")
            continue
        now, ref = np.asarray(mg.small(a), dtype=np.float64), np.asarray(e["small"], dtype=np.float64)
        delta = float(np.max(np.abs(now - ref)))
        span = e["max"] - e["min"]
        shown = f"{delta:.3g}" if delta else f"0 (below {mg.DIGITS}-digit rounding)"
        kind = f"{mg.BLOCK}x{mg.BLOCK} means" if a.ndim == 2 else "points"
        where = (f"max |diff| of {kind} {shown} (range {span:.3g}); "
                 f"min/max {float(a.min()):.9g}/{float(a.max()):.9g}, expected {e['min']:.9g}/{e['max']:.9g}")
        meta = info.get(k, {})
        if "target" in e and meta.get("target") != e["target"]:
            out.append(f"{k}: target class {meta.get('target')}, expected {e['target']}")
        elif strict:
            if mg.sha256(a) != e["sha256"]:
                out.append(f"{k}: bits differ; {where}")
            elif "base_score" in e and meta.get("base_score") != e["base_score"]:
                out.append(f"{k}: base score {meta.get('base_score')!r}, expected {e['base_score']!r}")
        else:
            tol = RTOL * span + 10.0 ** (1 - mg.DIGITS) * float(np.max(np.abs(ref)))  # + the 6-digit rounding
            if delta > tol:
                out.append(f"{k}: beyond {RTOL:g} of the range: {where}")
    return out


def report(expected: dict, bad: list[str], mode: str) -> str:
    note = ""
    if expected["config"] != mg.config():
        note = ("\nnote: make_golden.py's parameters differ from those expected.json was made with "
                "(regenerate it if the change is meant)")
    return f"{len(bad)} golden array(s) differ ({mode}):\n  " + "\n  ".join(bad) + note


def test_golden_set_is_complete(expected):
    """expected.json holds every array the set computes, and the set covers every registered method of
    classifiers (the autoencoder's ``recon`` is checked against its exact answer in test_inspect)."""
    import salient

    keys = [f"{p}/{j}" for p in mg.PHOTOS for j in mg.JOBS]
    keys += [f"{mg.CURVE_OF[0]}/{c}" for c in ("insertion", "deletion")]
    assert sorted(expected["arrays"]) == sorted(keys), report(expected, ["the set of arrays changed"], "keys")
    clips_only = {"temporal"}  # no image maps: checked on clips in test_video_methods
    # recon: exact known answers
    classifiers = {n for n, m in salient.METHODS.items() if m.output == "classes"} - clips_only
    missing = sorted(classifiers - {m for m, _ in mg.JOBS.values()})  # in test_inspect, on an autoencoder
    assert not missing, f"methods not in the golden set: {', '.join(missing)}"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fixed_maps_match_golden(expected, executor, request):
    """RISE, DiDA, occlusion, the CAMs and the curves: bit for bit here, within RTOL elsewhere."""
    arrays, info, _ = run(executor, request)
    strict, why = same_machine(expected)
    keys = [k for k in expected["arrays"] if not mg.is_adaptive(k)]
    bad = problems(expected, arrays, info, keys, strict)
    mode = "bit for bit" if strict else f"another machine ({why}), block means within {RTOL:g} of the range"
    if bad:
        pytest.fail(report(expected, bad, mode), pytrace=False)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_adaptive_maps_match_golden(expected, executor, request):
    """BOREx (rise and Grad-CAM++ priors) and GP: bit for bit on the recording machine, else skipped."""
    strict, why = same_machine(expected)
    if not strict:
        pytest.skip(f"BOREx/GP maps not compared on another machine ({why}): their GP fits may take other paths")
    arrays, info, _ = run(executor, request)
    keys = [k for k in expected["arrays"] if mg.is_adaptive(k)]
    bad = problems(expected, arrays, info, keys, True)
    if bad:
        pytest.fail(report(expected, bad, "bit for bit"), pytrace=False)


@pytest.mark.ray
def test_ray_maps_equal_local_bit_for_bit(request):
    """The package's promise, on any machine: the Ray executor (2 workers) gives the local executor's bits."""
    local, local_info, _ = run("local", request)
    ray, ray_info, _ = run("ray", request)
    assert sorted(ray) == sorted(local)
    bad = [k for k in local if mg.sha256(ray[k]) != mg.sha256(local[k])]
    assert not bad, "Ray differs from local in: " + ", ".join(
        f"{k} (max |diff| {float(np.max(np.abs(ray[k].astype(np.float64) - local[k]))):.3g})" for k in bad)
    assert ray_info == local_info
