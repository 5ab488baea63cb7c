"""Start real deft-node processes on loopback, and always stop them by PID.

``start_node(kind=..., instances=..., params=..., ingress={...}, ...)`` writes a
config with free ports and a node id unique to the test, starts ``deft-node``,
waits until every process reports ready, and returns a ``LocalNode``. At
teardown every process it started is stopped by PID and the node's /dev/shm
objects are checked and removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from deft.tools.localnode import LocalNode, node_config, write_config


def pytest_collection_modifyitems(items):
    """Every test under tests/integration starts real processes: mark it slow (``-m "not slow"``).
    A ``pytestmark`` in a conftest would do nothing; this hook sees every collected test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def start_node(tmp_path):
    nodes: list[LocalNode] = []

    def start(kind: str = "nat", instances: int = 2, params: dict | None = None, **sections) -> LocalNode:
        node_id = f"it{os.getpid()}n{len(nodes) + 1}"
        path = write_config(tmp_path / f"{node_id}.toml", node_config(node_id, kind, instances, params, **sections))
        node = LocalNode.start(path, tmp_path / f"{node_id}.log")
        nodes.append(node)
        node.wait_ready()
        return node

    yield start
    left = {node.node_id: node.stop() for node in nodes}
    assert not any(left.values()), f"shared memory left behind: {left}"


def run_trafficgen(node: LocalNode, tmp_path: Path, *args: str, timeout: float = 120) -> dict:
    """Run deft-trafficgen against a node as a separate process; return its JSON report."""
    report = tmp_path / f"report{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "deft.tools.trafficgen", "--to", node.ingress, "--listen", node.egress,
           "--json", str(report), "--quiet", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return orjson.loads(report.read_bytes())
