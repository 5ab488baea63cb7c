"""Smoke test of benchmarks/raft_vs_pysyncobj.py: tiny op counts, the JSON output parses.

Starts 2 x 3 member processes (the script stops them by PID); skipped without pysyncobj
(the ``bench`` extra).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysyncobj")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "raft_vs_pysyncobj.py"


@pytest.mark.slow
def test_bench_runs_and_reports_json() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--ops", "60", "--window", "10", "--lat-ops", "20",
                          "--warmup", "5", "--rounds", "1", "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    for impl in ("deft", "pysyncobj"):
        r = res[impl]
        assert r["increments"] == 5 + 20 + 60
        assert r["throughput_ops_s"] > 0
        assert 0 < r["latency_p50_us"] <= r["latency_p99_us"]
        assert r["fsync"] is False
    assert set(res["ratio_deft_over_pysyncobj"]) == {"throughput_ops_s", "latency_p50_us", "latency_p99_us"}
