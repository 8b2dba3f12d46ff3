"""The benchmarks still run (tiny sizes; what they print is read by people, not asserted as speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_bench_verify_runs_every_approach() -> None:
    out = _run("bench/bench_verify.py", "--tokens", "20", "--rounds", "1")
    for name in ("floor", "first sight", "cache hit", "PyJWT", "joserfc", "authlib"):
        assert name in out
    targets = [line.split() for line in out.splitlines() if "target <=" in line]
    assert [t[0] for t in targets] == ["fresh", "reused"], out  # the two figures, judged
    assert all(t[-1] in ("met", "MET") for t in targets), out


def test_bench_server_serves_every_app_in_both_framings_without_errors() -> None:
    out = _run("bench/bench_server.py", "--quick")
    rows = [line.split() for line in out.splitlines() if line.startswith("uvicorn-fast ")]
    cells = {(row[1], row[2], row[3]) for row in rows}
    expected = {(f, k, a) for f in ("2025-11-25", "2026-07-28") for k in ("1", "4")
                for a in ("ours", "otel", "noauth", "sdk", "floor")}
    assert cells == expected, out
    assert all(row[8] == "0" for row in rows), out  # the errors column
    assert all(float(row[4]) > 0 for row in rows), out  # req/s
    assert "RSS after load" in out
    overhead = [line for line in out.splitlines() if line.strip().startswith("uvicorn-fast") and "throughput" in line]
    assert len(overhead) == 4 and all("x [" in line for line in overhead), out  # telemetry on / off, each cell
    judged = [line for line in out.splitlines() if "target >=" in line or "target <=" in line]
    assert len(judged) == 5 and all(line.endswith(("met", "NOT MET")) for line in judged), out


def test_bench_scale_runs_one_to_three_instances_without_errors() -> None:
    out = _run("bench/bench_scale.py", "--clients", "2", "--seconds", "0.5", "--rounds", "1")
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit() and "concurrent" not in line]
    assert [row[0] for row in rows] == ["1", "2", "3"], out
    assert all(row[2] == "0" for row in rows), out  # the errors column


def test_bench_layers_times_every_app_and_the_sdk_dispatch_in_both_framings() -> None:
    out = _run("bench/bench_layers.py", "--quick")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("202")}
    assert set(rows) == {"2025-11-25", "2026-07-28"}, out
    for cells in rows.values():
        floor, sdk, noauth, ours, dispatch, rest = (float(c.removesuffix("µs")) for c in cells[:6])
        assert 0 < floor and 0 < dispatch < ours and rest > 0, out  # the dispatch is a part of ours


def test_bench_exchange_prints_a_miss_and_a_hit_against_their_floors() -> None:
    out = _run("bench/bench_exchange.py", "--calls", "5", "--rounds", "1")
    rows = {line[:30].strip(): line[30:].split() for line in out.splitlines() if "µs" in line}
    assert set(rows) == {"floor: local HTTP round trip", "exchange, miss", "floor: dict lookup", "exchange, hit",
                         "downstreams.token, hit"}, out
    assert float(rows["exchange, hit"][0]) < float(rows["exchange, miss"][0]), out  # a hit costs less than a miss
    assert all(float(rows[name][2].removesuffix("x")) > 0 for name in ("exchange, miss", "exchange, hit")), out
    assert "a hit saves" in out


def test_bench_production_prints_the_cost_of_rate_limits_and_the_worker_figures() -> None:
    out = _run("bench/bench_production.py", "--quick")
    limits = [line.split() for line in out.splitlines() if line.startswith("202")]
    assert {(row[0], row[1]) for row in limits} == {(f, k) for f in ("2025-11-25", "2026-07-28") for k in ("1", "4")}
    workers = [line.split() for line in out.splitlines() if line[:3].strip() in ("1", "4") and "x [" in line
               and not line.startswith("202")]
    assert [row[0] for row in workers] == ["1", "4"], out
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in limits + workers), out
    assert out.count("errors: 0") == 2, out
