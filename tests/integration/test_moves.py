"""Planned moves under traffic on a loopback cluster (controller + NAT nodes, replication on).

A node joins and ``rebalance`` gives it pairs; ``drain`` moves every role off
a node; drains and rebalances back and forth; a primary SIGKILLed while its
pair is frozen for a hand-over. Each: the generator's report shows no loss
(G1), per-flow order (G2), no duplicate (G3: a planned hand-over leaves
nothing in doubt) and every flow kept its NAT mapping (G5).
"""

from __future__ import annotations

import time

import pytest

from deft.tools.ctl import query
from deft.tools.drills import healthy, run_operation, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

from .test_failover import IN_FLIGHT_PER_KILL, assert_no_harm, controller_status, running_cluster

pytestmark = pytest.mark.slow

FLOWS, RATE = 1000, 3000


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, "mv")


def operate(cluster: LocalCluster, request: dict) -> dict:
    """Start an operation and wait for its end (as ``deft-ctl ... --wait``); it must be done."""
    op = run_operation(cluster, request, timeout=30.0)
    assert op["state"] == "done", op
    return op


def roles_of(st: dict, node: str) -> list[int]:
    return [p["pair"] for p in st["pairs"] if node in (p["primary"].split("/")[0], p["secondary"].split("/")[0])]


def primaries_per_node(st: dict) -> dict[str, int]:
    count: dict[str, int] = {}
    for p in st["pairs"]:
        node = p["primary"].split("/")[0]
        count[node] = count.get(node, 0) + 1
    return count


def test_a_joining_node_takes_pairs_and_a_drained_node_serves_nothing(cluster, tmp_path):
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 6.0)
    try:
        time.sleep(1.0)
        node4 = cluster.add_node()
        wait_for(cluster, lambda st: any(i["id"].startswith(node4.node_id) and i["state"] == "up"
                                         for i in st["instances"]), timeout=15)
        rebalanced = operate(cluster, {"cmd": "rebalance"})
        st = controller_status(cluster)
        assert primaries_per_node(st).get(node4.node_id, 0) >= 1, st["pairs"]
        drained = cluster.nodes[1].node_id
        drain = operate(cluster, {"cmd": "drain", "node": drained})
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster)
    assert rebalanced["hand_overs"] >= 1 and drain["hand_overs"] == 2
    st = wait_for(cluster, healthy, timeout=10)
    assert roles_of(st, drained) == [] and st["draining"] == [drained]
    assert max(primaries_per_node(st).values()) == 2      # 6 primaries on the 3 nodes left: 2 each


def test_pairs_moved_back_and_forth_lose_nothing(cluster, tmp_path):
    """Drain a node, let it back, rebalance; the next node; and so on: about 20 hand-overs."""
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 9.0)
    hand_overs = 0
    try:
        time.sleep(0.5)
        for k in range(6):
            node = cluster.nodes[k % 3].node_id
            hand_overs += operate(cluster, {"cmd": "drain", "node": node})["hand_overs"]
            assert query(cluster.ctl.control, {"cmd": "undrain", "node": node}, 3000)["ok"]
            hand_overs += operate(cluster, {"cmd": "rebalance"})["hand_overs"]
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster)
    assert hand_overs >= 18
    wait_for(cluster, healthy, timeout=10)


def freeze_pair_2(cluster: LocalCluster) -> dict:
    """Freeze pair 2 on its primary, as a hand-over's first step (no route change follows); its pair."""
    pair = next(p for p in controller_status(cluster)["pairs"] if p["pair"] == 2)
    node_id, instance = pair["primary"].split("/")
    node = next(n for n in cluster.nodes if n.node_id == node_id)
    reply = query(node.control, {"cmd": "freeze", "pair": 2, "instance": int(instance[2:])}, 3000)
    assert reply["ok"] and reply["frozen"], reply
    return pair


def worker_counter(cluster: LocalCluster, instance_id: str, name: str) -> int:
    node = next(n for n in cluster.nodes if instance_id.startswith(n.node_id + "/"))
    return next(i["counters"][name] for i in node.status()["instances"] if i["id"] == instance_id)


def frozen_under_traffic(cluster: LocalCluster, tmp_path, seconds: float, kill: str | None) -> dict:
    """Traffic; a second in, pair 2 frozen on its primary and then (``kill``: "primary" or
    "secondary") that instance SIGKILLed; the generator's report checked for harm; the pair."""
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, seconds)
    try:
        time.sleep(1.0)
        pair = freeze_pair_2(cluster)
        if kill:
            query(cluster.ctl.control, {"cmd": "fail", "what": "nf", "id": pair[kill]}, 3000)
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster, duplicates_allowed=IN_FLIGHT_PER_KILL if kill else 0)
    return pair


def primary_of_2_once_healthy(cluster: LocalCluster) -> str:
    st = wait_for(cluster, healthy, timeout=10)
    return next(p for p in st["pairs"] if p["pair"] == 2)["primary"]


def test_a_primary_killed_while_frozen_fails_over_without_loss(cluster, tmp_path):
    """The freeze answered, then the old primary dies before (or as) the route change lands: the
    hand-over's routes and the failure's agree (its secondary takes the pair over)."""
    pair = frozen_under_traffic(cluster, tmp_path, 4.0, kill="primary")
    assert primary_of_2_once_healthy(cluster) == pair["secondary"]


def test_a_freeze_no_route_change_follows_lapses_and_the_pair_goes_on(cluster, tmp_path):
    """The controller dies (or gives up) between the freeze and the hand-over: after two seconds the
    primary processes what it held and goes on; nothing lost, nothing twice."""
    pair = frozen_under_traffic(cluster, tmp_path, 4.5, kill=None)
    assert worker_counter(cluster, pair["primary"], "freezes_lapsed") == 1


def test_the_secondary_killed_while_its_primary_is_frozen(cluster, tmp_path):
    """The hand-over's target dies: the pair gets a new secondary, the void freeze is dropped at once."""
    pair = frozen_under_traffic(cluster, tmp_path, 4.0, kill="secondary")
    assert primary_of_2_once_healthy(cluster) == pair["primary"]
    assert worker_counter(cluster, pair["primary"], "freezes_lapsed") == 0


def test_a_new_primary_dying_before_it_synced_its_secondary_loses_no_state(cluster, tmp_path):
    """A rebalance hands pairs to a joining node whose workers die right after each hand-over, with
    the sync to their new secondary (the old primary) just sent: the old primary goes on from the
    state it handed over and the copies it kept since (``Worker.shadows``), not from fresh state."""
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 5.0)
    try:
        time.sleep(0.5)
        node4 = cluster.add_node(env={"DEFT_FAILPOINTS": "worker_takeover_sync=exit#1"}, nf={"restart": False})
        wait_for(cluster, lambda st: sum(i["id"].startswith(node4.node_id) and i["state"] == "up"
                                         for i in st["instances"]) == 2, timeout=15)
        run_operation(cluster, {"cmd": "rebalance"}, timeout=30.0)   # its hand-overs' new primaries die
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster)
    totals = {}
    for node in cluster.nodes:
        for inst in node.status()["instances"]:
            for name in ("takeover_from_shadow", "takeover_failed"):
                totals[name] = totals.get(name, 0) + inst["counters"].get(name, 0)
    assert totals.get("takeover_failed", 0) == 0, totals
    assert totals.get("takeover_from_shadow", 0) >= 1, totals     # the window was hit


def test_a_restarted_worker_gets_its_share_back_by_itself(tmp_path):
    """``rebalance_after_ms``: a worker SIGKILLed under traffic fails over to its secondaries' workers;
    once its restart is ready the controller rebalances by itself, and the restarted worker is a
    primary again, with nothing lost, reordered or remapped (a worker's death leaves nothing in doubt)."""
    from deft.tools.drills import kill_primary_worker

    cluster = LocalCluster(tmp_path, "ra", n_nodes=3, replicate=True, controller={"rebalance_after_ms": 300})
    try:
        cluster.wait_ready()
        gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, 5.0)
        try:
            time.sleep(1.0)
            failover = kill_primary_worker(cluster, 0)
            st = wait_for(cluster, lambda st: any(e["event"] == "rebalance_started" for e in st["events"])
                          and all(op["state"] == "done" for op in st["operations"]), timeout=15)
        finally:
            report = traffic_report(gen, tmp_path / "report.json")
        assert_no_harm(report, cluster)
        started = next(e for e in st["events"] if e["event"] == "rebalance_started")
        recovered = next(e for e in st["events"] if e["event"] == "instance_recovered")
        assert started["t_ms"] >= recovered["t_ms"] + 300
        assert failover.victim in {p["primary"] for p in st["pairs"]}, st["pairs"]   # a primary again
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
