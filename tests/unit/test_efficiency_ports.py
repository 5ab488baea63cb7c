"""benchmarks/efficiency.py gives every device fresh ports; a worker's base port must stay out of the
kernel's ephemeral range, where base + i may be any connection's port by the time the worker binds."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

from deft.tools.localnode import _ephemeral_low

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_efficiency():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("efficiency_under_test", BENCH / "efficiency.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_worker_base_ports_stay_below_the_ephemeral_range():
    eff = load_efficiency()
    mapping: dict[int, int] = {}
    low = _ephemeral_low()
    seen = set()
    for k in (1, 2, 3):
        raw = tomllib.loads((BENCH.parent / "examples" / "cluster" / f"node{k}.toml").read_text())
        cfg = eff._fresh_ports(raw, mapping)
        n = cfg["nf"]["instances"]
        for key in ("fabric", "replication"):
            base = port(cfg["node"][key])
            assert base + n <= low, (key, base, low)
            ports = set(range(base, base + n))
            assert not ports & seen, "two nodes' workers would bind the same port"
            seen |= ports
