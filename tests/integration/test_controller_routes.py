"""The controller places pairs over the live nodes and moves buckets off a failed node."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deft.tools.localnode import LocalCluster

from .conftest import run_trafficgen

pytestmark = pytest.mark.slow


@pytest.fixture
def routed_cluster(tmp_path):
    # node 1 takes the traffic; node 2 has no ingress and gets its packets through its fabric.
    # 10 ms x 10: a heavily loaded test machine makes beats late; a false suspicion would move routes
    cluster = LocalCluster(tmp_path, "r", miss_limit=10)
    try:
        yield cluster.wait_ready().ctl, cluster.nodes
    finally:
        cluster.stop()


def test_routes_spread_traffic_over_both_nodes_then_move_off_a_failed_one(routed_cluster, tmp_path):
    ctl, (a, b) = routed_cluster
    sa = a.status()
    assert sa["routes"]["nodes"] == [a.node_id, b.node_id] and sa["routes"]["epoch"] >= 2
    report = run_trafficgen(a, tmp_path, "--flows", "200", "--rate", "3000", "--packets", "6000")
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    sb = b.status()
    assert sb["ingress"] is None and sb["units"] == []
    assert sum(i["counters"]["released"] for i in sb["instances"]) > 1000   # half the pairs are on b

    before = a.status()["routes"]["epoch"]

    def moved_off_b(e):
        return e["event"] == "routes_pushed" and e["ok"] and e["nodes"] == [a.node_id] and e["epoch"] > before

    out = subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--controller", ctl.control, "fail", "node",
                          b.node_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    st = ctl.wait_for(lambda st: any(moved_off_b(e) for e in st["events"]))
    moved = next(e for e in st["events"] if moved_off_b(e))
    failed = [e for e in st["events"] if e["event"] == "node_failed" and e["node"] == b.node_id
              and e["t_ms"] <= moved["t_ms"]][-1]
    assert moved["t_ms"] - failed["t_ms"] < 100          # buckets leave the failed node at once
    assert a.status()["routes"]["nodes"] == [a.node_id]
    report = run_trafficgen(a, tmp_path, "--flows", "200", "--rate", "3000", "--packets", "3000")
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert b.stop()  # the killed node left its shared memory; stop() removed it
