"""Bucket moves under NAT traffic on a loopback cluster (controller + 3 nodes, replication on).

``move --buckets ... --to-pair P`` moves the buckets' flows (state, NAT ports, their place in the
stamp order) to another pair while packets keep coming: back and forth, and with the pairs'
primaries SIGKILLed in the middle. Each: the generator's report shows no loss (G1), per-flow order
(G2), no duplicate for a worker kill (G3) and every flow kept its NAT mapping (G5).
"""

from __future__ import annotations

import time

import pytest

from deft.tools.ctl import query
from deft.tools.drills import healthy, run_operation, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

from .test_failover import IN_FLIGHT_PER_KILL, assert_no_harm, running_cluster

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
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 10.0)
    moved = 0
    try:
        time.sleep(1.0)
        for k in range(20):
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


# the CI suite dies at the first source and the last target step; make test-long at all five
@pytest.mark.parametrize("point", [p if p in ("worker_move_held", "worker_move_import_decided")
                                   else pytest.param(p, marks=pytest.mark.long) for p in SOURCE_STEPS + TARGET_STEPS])
def test_a_primary_dying_at_each_step_of_a_move_loses_nothing(tmp_path, point):
    cluster = LocalCluster(tmp_path, "bk", n_nodes=3, replicate=True,
                           env={2: {"DEFT_FAILPOINTS": f"{point}=exit#1"}})
    try:
        cluster.wait_ready()
        source, target = (2, 0) if point in SOURCE_STEPS else (0, 2)
        gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 4.0)
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


def test_a_move_survives_a_controller_restart_and_a_secondary_killed_midway(tmp_path):
    """Every other pair's buckets move to pair 0 (five legs, one per source pair). Between legs the
    controller is SIGKILLed and started again: the new one takes the assignment and the running move
    back from the nodes' routes and finishes it. Then, while pair 0's buckets go to pair 3, pair 3's
    secondary is SIGKILLed (the import's 2PC must go to its next secondary). Nothing lost or twice."""
    cluster = LocalCluster(tmp_path, "bc", n_nodes=3, replicate=True)
    try:
        cluster.wait_ready()
        gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 6.0)
        try:
            time.sleep(1.0)
            op = query(cluster.ctl.control, {"cmd": "move", "buckets": [b for b in range(4096) if b % 6], "to_pair": 0},
                       3000)
            wait_for(cluster, lambda st: any(o["id"] == op["id"] and o["move"]["legs_done"] >= 2
                                             for o in st["operations"]), timeout=15)
            cluster.restart_controller(kill=True)
            st = wait_for(cluster, lambda st: healthy(st) and sum(p["buckets"] for p in st["pairs"] if p["pair"]) == 0,
                          timeout=20)
            assert [o for o in st["operations"] if o["kind"] == "move"], st["operations"]   # taken up again
            secondary = next(p for p in st["pairs"] if p["pair"] == 3)["secondary"]
            started = query(cluster.ctl.control, {"cmd": "move", "buckets": list(range(0, 4096, 12)), "to_pair": 3}, 3000)
            query(cluster.ctl.control, {"cmd": "fail", "what": "nf", "id": secondary}, 3000)
            done = wait_for(cluster, lambda st: any(o["id"] == started["id"] and o["state"] != "running"
                                                    for o in st["operations"]), timeout=30)
            assert next(o for o in done["operations"] if o["id"] == started["id"])["state"] == "done", done["operations"]
        finally:
            report = traffic_report(gen, tmp_path / "report.json")
        assert_no_harm(report, cluster, duplicates_allowed=IN_FLIGHT_PER_KILL)   # the secondary SIGKILLed
        wait_for(cluster, healthy, timeout=10)
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
