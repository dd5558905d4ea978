"""``salient bench``: known-answer rates with simulated workers, the protocol, the results schema, ``--compare``,
an end-to-end run on a toy model, and every bad input (exit 2, one line, nothing written).

Simulated workers: a toy model whose forward sleeps ``DELAY`` seconds per batch (sleep releases the GIL, so
local workers overlap exactly as devices would), so every rate has a known value: a worker does ``b / DELAY``
forward passes/s raw, and an occlusion job of 16 one-batch queries plus its unmasked pass takes a known
number of batch times (see :func:`test_known_rates_ratios_and_efficiency`). Tolerance: 10% (thread hand-offs
and the scheduler cost well under a millisecond per 40 ms batch; a loaded machine delays sleeps a little).
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pandas as pd
import pytest
import torch
from cli_toys import spec
from toy_models import Linear, toy

import salient
from salient import cli
from salient.bench import limits
from salient.bench.protocol import Sample, alternate, ratios, spread
from salient.bench.runner import BenchConfig, Items, Runner, photo_items, run_bench, timed
from salient.bench.schema import COLUMNS, PARQUET_NAME, SCHEMA_VERSION, frame, read_results, write_results
from salient.bench.suite import METHODS, SUITE_VERSION, Case, parse_methods, scaled

DELAY, BATCH, TOL = 0.04, 4, 0.10


class Sleepy(torch.nn.Module):
    """Linear logits after sleeping DELAY seconds: every forward batch costs the same known time."""

    def __init__(self):
        super().__init__()
        self.inner = Linear(n_classes=3, size=32, seed=0)

    def forward(self, x):
        time.sleep(DELAY)
        return self.inner(x)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def close(value: float, expected: float, tol: float = TOL) -> bool:
    return abs(value - expected) <= tol * abs(expected)


# ---------------------------------------------------------------- known answers


def test_known_rates_ratios_and_efficiency():
    """16 windows (window 8, stride 8 on 32 x 32) in 4 queries of one batch each, plus the unmasked pass (one
    padded batch) = 17 passes. One worker: 1 + 4 batch times -> 17 / (5 d); raw 4 / d; ratio 0.85; idle 0.
    Two workers: the unmasked batch, then 2 batches each -> 17 / (3 d); raw 8 / d; ratio 17/24; idle 1/6
    (5 busy batch times of 6); scaling efficiency (17 / 3d) / (2 · 17 / 5d) = 5/6."""
    model = toy(Sleepy())
    case = Case("photo", 32, "occlusion", {"window": (8, 8), "stride": (8, 8)})
    config = BenchConfig(rounds=2, round_seconds=0.0)
    rows = []
    for workers in (1, 2):
        with salient.Engine(model, workers=workers, batch_size=BATCH) as eng:
            lines: list[str] = []
            runner = Runner(eng, config, random.Random(0), lines.append)
            rows.append(runner.case(case, Items(photo_items(eng, 32, False)), model.input_shape))
            rows += runner.raw_rows({("photo", 32): model.input_shape})
            assert len(lines) == 2 and "occlusion" in lines[0] and "raw" in lines[1]
    limits.add_efficiency(rows)
    by = {(r["workers"], r["case"]): r for r in rows}
    d = DELAY
    expect = {1: (17 / (5 * d), 4 / d, 0.0), 2: (17 / (3 * d), 8 / d, 1 / 6)}
    for w, (rate, raw, idle) in expect.items():
        r = by[(w, "occlusion")]
        assert r["n_forward"] == 17 and r["items"] == 1 and r["rounds"] == 2 and r["batch"] == BATCH
        assert close(r["rate"], rate), (w, r["rate"], rate)
        assert close(r["rate_per_worker"], rate / w)
        assert close(r["raw_rate"], raw), (w, r["raw_rate"], raw)
        assert close(r["ratio"], rate / raw), (w, r["ratio"], rate / raw)
        assert abs(r["idle_share"] - idle) < 0.06, (w, r["idle_share"], idle)
        assert r["rate_min"] <= r["rate"] <= r["rate_max"]
        assert close(by[(w, "raw")]["rate"], raw)
        assert r["warmup_s"] > 0 and r["round_s"] > 0
    assert by[(1, "occlusion")]["efficiency"] == 1.0
    assert close(by[(2, "occlusion")]["efficiency"], 5 / 6), by[(2, "occlusion")]["efficiency"]
    assert close(by[(2, "raw")]["efficiency"], 1.0)  # sleeping workers share nothing


def test_efficiency_and_limit_rule_on_known_rows():
    def row(case, workers, rate, **kw):
        return {"input": "photo", "size": 224, "case": case, "workers": workers, "rate": rate, **kw}

    rows = [row("rise", 2, 100.0), row("rise", 4, 150.0), row("rise", 8, 200.0), row("raw", 2, 50.0),
            row("raw", 4, 100.0)]
    limits.add_efficiency(rows)  # the smallest count (2) is the base: rate(n) / (n/2 · rate(2))
    assert [r["efficiency"] for r in rows] == [1.0, 0.75, 0.5, 1.0, 1.0]
    base = {"case": "rise", "ratio": 0.9, "idle_share": 0.05, "driver_share": 0.1}
    assert limits.limit_of(base, "local") == "device"
    assert limits.limit_of({**base, "ratio": 0.5}, "local") == "worker"
    assert limits.limit_of({**base, "idle_share": 0.5}, "local") == "supply"
    assert limits.limit_of({**base, "idle_share": 0.5}, "ray") == "transport"
    assert limits.limit_of({**base, "idle_share": 0.5, "driver_share": 0.9}, "ray") == "driver"
    assert limits.limit_of({**base, "case": "raw", "ratio": 1.0}, "ray") == "device"


# ---------------------------------------------------------------- the protocol


def test_alternation_pairs_equal_lengths_in_seeded_random_order():
    log: list[tuple[str, float]] = []
    lengths = iter([0.3, 0.5, 0.2, 0.4, 0.6, 0.1, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])

    def engine_round() -> Sample:
        s = next(lengths)
        log.append(("engine", s))
        return Sample(10, s)

    def raw_round(seconds: float) -> Sample:
        log.append(("raw", seconds))
        return Sample(20, seconds)

    eng, raw = alternate(engine_round, raw_round, 12, random.Random(0))
    assert len(eng) == len(raw) == 12 and log[0] == ("engine", 0.3) and log[1] == ("raw", 0.3)
    firsts = []
    for k in range(12):  # each pair: raw lasts its engine round (raw first: the previous engine round)
        a, b = log[2 * k], log[2 * k + 1]
        firsts.append(a[0])
        if a[0] == "engine":
            assert b == ("raw", a[1])
        else:
            assert b[0] == "engine" and a[1] == log[2 * k - 1 if log[2 * k - 1][0] == "engine" else 2 * k - 2][1]
    assert {"engine", "raw"} <= set(firsts[1:])  # both orders occur
    assert ratios([Sample(10, 1.0), Sample(30, 2.0)], [Sample(20, 1.0), Sample(10, 1.0)]) == [0.5, 1.5]
    no_raw, none = alternate(lambda: Sample(1, 0.1), None, 3, random.Random(0))
    assert len(no_raw) == 3 and none == []


def test_spread_and_method_clock():
    assert spread([5.0, 1.0, 3.0, 2.0, 4.0]) == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0}
    assert np.isnan(spread([])["median"])

    def gen():
        time.sleep(0.02)
        got = yield ["q1"]
        time.sleep(0.03)
        return got * 2

    clock = [0.0]
    g = timed(gen(), clock)
    assert next(g) == ["q1"]
    time.sleep(0.05)  # the engine's time: not the method's
    with pytest.raises(StopIteration) as stop:
        g.send([1])
    assert stop.value.value == [1, 1]
    assert 0.05 <= clock[0] < 0.08


def test_suite_parameters_scale_and_methods_parse():
    assert scaled({"window": (32, 32), "stride": (16, 16)}, 448) == {"window": (64, 64), "stride": (32, 32)}
    assert scaled({"window": (2, 56, 56)}, 112) == {"window": (2, 28, 28)}
    assert scaled({"n_masks": 256}, 1024) == {"n_masks": 256}
    assert parse_methods(None) == METHODS and parse_methods("dida, rise,dida") == ("dida", "rise")


# ---------------------------------------------------------------- results and --compare


def fake_rows(rates: dict[str, float], workers: int = 1) -> list[dict]:
    out = []
    for case, rate in rates.items():
        r = dict.fromkeys(COLUMNS, 0.0)
        r.update(input="photo", size=224, workers=workers, case=case, rate=rate, raw_rate=200.0, ratio=rate / 200,
                 rounds=3, items=1, n_forward=100, batch=4, limit="device", efficiency=1.0)
        out.append(r)
    return out


def write_fake(folder, rates, suite=SUITE_VERSION, workers=1):
    meta = {"suite_version": suite, "settings": {"model": "m", "executor": "local", "precision": "fp32"},
            "machine": {"cpu": "test cpu", "cores": 2}, "notes": [], "limits": []}
    return write_results(folder, meta, fake_rows(rates, workers))


def test_results_round_trip(tmp_path):
    rows = fake_rows({"raw": 200.0, "rise": 150.5, "borex": 20.25})
    rows[1]["rate_q1"] = float("nan")  # NaN survives Parquet; JSON writes null
    meta = {"suite_version": SUITE_VERSION, "settings": {"model": "m"}, "machine": {"cores": 2}, "limits": []}
    write_results(tmp_path, meta, rows)
    got_meta, got = read_results(tmp_path)
    pd.testing.assert_frame_equal(got, frame(rows))
    assert list(got.columns) == list(COLUMNS)
    assert got_meta == {**meta, "schema_version": SCHEMA_VERSION}
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["rows"][1]["rate_q1"] is None and doc["rows"][2]["rate"] == 20.25
    import pyarrow.parquet as pq

    versions = json.loads(pq.read_schema(tmp_path / PARQUET_NAME).metadata[b"salient_bench"])
    assert versions == {"schema_version": SCHEMA_VERSION, "suite_version": SUITE_VERSION}


def test_compare_prints_ratios(tmp_path, capsys):
    a = write_fake(tmp_path / "a", {"raw": 200.0, "rise": 100.0, "dida": 50.0})
    b = write_fake(tmp_path / "b", {"raw": 300.0, "rise": 250.0})
    c = write_fake(tmp_path / "c", {"raw": 100.0, "rise": 25.0, "dida": 100.0})
    rc, out, err = run(capsys, "bench", "--compare", a, b, c)
    assert rc == 0, err
    lines = {tuple(ln.split()[:4]): ln.split()[4:] for ln in out.splitlines() if ln.split()[:1] == ["1"]}
    assert lines[("1", "photo", "224", "raw")] == ["200.0", "300.0", "1.50", "100.0", "0.50"]
    assert lines[("1", "photo", "224", "rise")] == ["100.0", "250.0", "2.50", "25.0", "0.25"]
    assert lines[("1", "photo", "224", "dida")] == ["50.0", "-", "-", "100.0", "2.00"]
    assert out.count("test cpu") == 3


# ---------------------------------------------------------------- end to end


def test_suite_end_to_end_on_a_toy_model(tmp_path, capsys):
    out = tmp_path / "bench"
    rc, stdout, err = run(capsys, "bench", "--model", spec("relu6"), "--quick", "0.05", "--rounds", "2", "--out", out)
    assert rc == 0, err
    meta, df = read_results(out)
    assert sorted(df["case"]) == sorted(["raw", *METHODS])
    numeric = [c for c, k in COLUMNS.items() if k != "str"]
    assert not df[numeric].isna().any().any(), df[numeric].isna().any()
    assert (df["rate"] > 0).all() and (df["raw_rate"] > 0).all()
    assert list(df["rounds"]) == [2 * len(METHODS) if c == "raw" else 2 for c in df["case"]]  # raw: all pooled
    assert (df["rate_min"] <= df["rate"]).all() and (df["rate"] <= df["rate_max"]).all()
    assert (df["limit"] != "").all()
    engine = df[df["case"] != "raw"]
    assert (engine["n_forward"] > 0).all() and (engine["method_share"] > 0).all()
    assert np.allclose(df["rate_per_worker"], df["rate"] / df["workers"])
    assert meta["suite_version"] == SUITE_VERSION and meta["machine"]["cores"] >= 1
    assert meta["settings"]["methods"] == list(METHODS) and meta["engines"]
    assert (out / "results.png").stat().st_size > 1000
    assert err.count("salient bench: ") >= len(METHODS) + 1  # a progress line per row
    assert "limit at" in stdout and "borex" in stdout


def test_scaling_rows_at_each_worker_count():
    meta, rows = run_bench(BenchConfig(model=spec("linear"), workers=(1, 2), methods=("occlusion",), rounds=1,
                                       round_seconds=0.0), progress=lambda line: None)
    assert sorted((r["workers"], r["case"]) for r in rows) == [(1, "occlusion"), (1, "raw"), (2, "occlusion"),
                                                                (2, "raw")]
    assert [x["workers"] for x in meta["limits"]] == [1, 2] and all("limit at" in x["line"] for x in meta["limits"])
    assert meta["settings"]["workers"] == [1, 2]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("argv", "needle"), [
    (["--workers", "1,99"], "cores here"),
    (["--method", "rise,foo"], "unknown method 'foo'"),
    (["--workers", "0"], "--workers expects positive integers"),
    (["--size", "a"], "--size expects positive integers"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--quick", "0"], "expected seconds > 0"),
    (["--address", "auto"], "needs --executor ray"),
    (["--precision", "fp64"], "invalid choice"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    rc, stdout, err = run(capsys, "bench", "--model", spec("linear"), *argv, "--out", out)
    assert rc == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and stdout == ""


def test_lower_precision_on_cpu_runs_with_a_line(tmp_path, capsys):
    """Documented choice: bf16 on CPU-only workers is run (torch's CPU autocast), with one line saying so."""
    out = tmp_path / "bf16"
    rc, stdout, err = run(capsys, "bench", "--model", spec("linear"), "--device", "cpu", "--precision", "bf16",
                          "--method", "occlusion", "--quick", "0.01", "--rounds", "1", "--out", out)
    assert rc == 0, err
    assert sum("bf16 on CPU workers: torch's CPU autocast" in ln for ln in err.splitlines()) == 1
    meta, df = read_results(out)
    assert meta["settings"]["precision"] == "bf16" and "CPU autocast" in meta["notes"][0]
    assert all(e["precision"] == "bf16" for e in meta["engines"].values())


def test_compare_refuses_other_suite_versions_and_missing_results(tmp_path, capsys):
    a = write_fake(tmp_path / "a", {"raw": 1.0}, suite="1")
    b = write_fake(tmp_path / "b", {"raw": 1.0}, suite="0")
    rc, out, err = run(capsys, "bench", "--compare", a, b)
    assert rc == 2 and "suite version 1" in err and "suite version 0" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    rc, out, err = run(capsys, "bench", "--compare", a, tmp_path / "empty")
    assert rc == 2 and "no salient bench results there" in err and out == ""
    rc, out, err = run(capsys, "bench", "--compare", a)
    assert rc == 2 and "two or more" in err


@pytest.mark.ray
def test_ray_suite_and_capacity(ray_session, tmp_path, capsys):
    """On the test session's Ray (4 CPUs): raw rounds run inside the actors; a count above the cluster is refused
    with what the cluster has, before any work."""
    rc, stdout, err = run(capsys, "bench", "--executor", "ray", "--workers", "1,99", "--model", spec("linear"),
                          "--method", "occlusion", "--quick", "0.01", "--out", tmp_path / "no")
    assert rc == 2 and "workers must lie in [1, 4] on this Ray cluster (4 CPUs" in err, err
    assert not (tmp_path / "no").exists()
    meta, rows = run_bench(BenchConfig(model=spec("linear"), executor="ray", workers=(2,), methods=("occlusion",),
                                       rounds=1, round_seconds=0.0), progress=lambda line: None)
    assert sorted(r["case"] for r in rows) == ["occlusion", "raw"]
    assert all(r["workers"] == 2 and r["rate"] > 0 and r["raw_rate"] > 0 for r in rows)
    assert meta["machine"]["ray_cluster"]["cpus"] == 4
