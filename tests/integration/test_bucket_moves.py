"""Bucket moves under NAT traffic on a loopback cluster (controller + 3 nodes, replication on).

``move --buckets ... --to-pair P`` moves the buckets' flows (state, NAT ports, their place in the
stamp order) to another pair while packets keep coming: back and forth, and with the pairs'
primaries SIGKILLed in the middle. Each: the generator's report shows no loss (G1), per-flow order
(G2), no duplicate for a worker kill (G3) and every flow kept its NAT mapping (G5).
"""

from __future__ import annotations

import time

import pytest

from deft.tools.drills import healthy, run_operation, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

from .test_failover import assert_no_harm, running_cluster

pytestmark = pytest.mark.slow

FLOWS, RATE = 1000, 3000


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, "bm")


def move(cluster, buckets: list[int], to_pair: int) -> dict:
    op = run_operation(cluster, {"cmd": "move", "buckets": buckets, "to_pair": to_pair}, timeout=30.0)
    assert op["state"] == "done", (op.get("error"), op)
    return op


def test_buckets_moved_back_and_forth_lose_nothing(cluster, tmp_path):
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 8.0)
    moved = 0
    try:
        time.sleep(1.0)
        for k in range(10):
            op = move(cluster, list(range(0, 2048)), (k + 1) % 6)
            moved += op["move"]["flows_moved"]
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster)
    assert moved > 1000
    wait_for(cluster, healthy, timeout=10)


# Node 2's workers die at a step of a move (``DEFT_FAILPOINTS``, the first time one reaches it): as
# the source (pair 2, primary n2/nf0, gives its buckets to pair 0) or as the target (pair 2 takes
# pair 0's). The pair fails over to its secondary on node 3 and the controller tries the leg again there.
SOURCE_STEPS = ["worker_move_held", "worker_move_exported", "worker_move_switched"]
TARGET_STEPS = ["worker_move_imported", "worker_move_import_decided"]


@pytest.mark.parametrize("point", SOURCE_STEPS + TARGET_STEPS)
def test_a_primary_dying_at_each_step_of_a_move_loses_nothing(tmp_path, point):
    cluster = LocalCluster(tmp_path, "bk", n_nodes=3, replicate=True,
                           env={2: {"DEFT_FAILPOINTS": f"{point}=exit#1"}})
    try:
        cluster.wait_ready()
        source, target = (2, 0) if point in SOURCE_STEPS else (0, 2)
        gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 5.0)
        try:
            time.sleep(1.0)
            op = move(cluster, list(range(source, 4096, 6)), target)
        finally:
            report = traffic_report(gen, tmp_path / "report.json")
        assert_no_harm(report, cluster)
        st = wait_for(cluster, healthy, timeout=10)
        assert next(p for p in st["pairs"] if p["pair"] == source)["buckets"] == 0, st["pairs"]
        took_over = next(p for p in st["pairs"] if p["pair"] == 2)["primary"]
        assert took_over.startswith(cluster.nodes[2].node_id), (point, took_over, op)   # n2/nf0 died
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
