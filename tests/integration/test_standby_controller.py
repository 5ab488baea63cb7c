"""A standby controller (``[controller] peers``/``witnesses``, runtime/controller/lease.py): one active at
a time; the standby takes over within a second of the active one's death with the assignment and
goes on failing over; a deposed controller's requests are refused by the nodes (fencing)."""

from __future__ import annotations

import signal
import time

import pytest

from deft.runtime.control import query
from deft.tools.ctl import main as ctl_main
from deft.tools.drills import healthy, start_traffic, traffic_report
from deft.tools.localnode import LocalCluster

from .test_failover import IN_FLIGHT_PER_KILL, assert_no_harm

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(tmp_path, "sb", n_nodes=3, replicate=True, standby=True)
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


def placement(st: dict) -> list[tuple]:
    return [(p["pair"], p["primary"], p["secondary"], p["buckets"]) for p in st["pairs"]]


def wait_status(ctl, predicate, timeout: float = 10.0) -> dict:
    return ctl.wait_for(predicate, timeout)


def test_standby_takes_over_within_a_second_then_a_worker_fails(cluster, tmp_path, capsys):
    active, standby = cluster.controllers
    st = active.status()
    assert st["controller"]["role"] == "active" and standby.status()["controller"]["role"] == "standby"
    assert standby.status()["controller"]["active"]["control"] == active.control
    # deft-ctl against the standby: status answers there, an operation goes on to the active one
    assert ctl_main(["--controller", standby.control, "status"]) == 0
    assert "STANDBY: the active controller is controller1" in capsys.readouterr().out
    buckets = list(range(0, 4096, 2))   # held by every pair: one leg per pair
    gen = start_traffic(cluster, tmp_path / "report.json", 1000, 2000, 7.0)
    try:
        time.sleep(1.5)
        # the active one dies in the middle of a bucket move (after its first leg switched)
        op = query(active.control, {"cmd": "move", "buckets": buckets, "to_pair": 0}, 3000)
        while op["state"] == "running" and op["move"]["legs_done"] < 1:
            op = query(active.control, {"cmd": "operation", "id": op["id"]}, 3000)
        assert op["state"] == "running", op
        killed_at = time.time()
        active.proc.send_signal(signal.SIGKILL)
        st2 = wait_status(standby, lambda s: s["controller"]["role"] == "active", 5.0)
        takeover_s = st2["controller"]["active_since"] - killed_at
        assert takeover_s < 1.0, takeover_s
        # the standby took the move over from the nodes' route sets and finished it
        st2 = wait_status(standby, lambda s: healthy(s) and any(
            o["kind"] == "move" and o["state"] == "done" for o in s["operations"]), 10.0)
        assert sum(p["buckets"] for p in st2["pairs"] if p["pair"] == 0) >= len(buckets)
        assert [(p["primary"], p["secondary"]) for p in st2["pairs"]] == [b[1:3] for b in placement(st)]
        time.sleep(max(0.0, killed_at + 1.0 - time.time()))
        victim = next(p for p in st2["pairs"] if p["pair"] == 2)["primary"]
        query(standby.control, {"cmd": "fail", "what": "nf", "id": victim}, 3000)
        after = wait_status(standby, lambda s: healthy(s) and next(
            p for p in s["pairs"] if p["pair"] == 2)["primary"] != victim, 10.0)
        assert all(p["secondary"] for p in after["pairs"])   # every pair whole again
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    print(f"controller takeover {takeover_s * 1000:.0f} ms")
    assert_no_harm(report, cluster, duplicates_allowed=IN_FLIGHT_PER_KILL)


def test_a_deposed_controller_is_fenced_and_the_restarted_one_stands_by(cluster):
    active, standby = cluster.controllers
    old_term = active.status()["controller"]["term"]
    node = cluster.nodes[0]
    # the standby takes over while the active one is paused past its lease
    active.proc.send_signal(signal.SIGSTOP)
    try:
        st = wait_status(standby, lambda s: s["controller"]["role"] == "active", 5.0)
        wait_status(standby, healthy, 5.0)
        assert st["controller"]["term"] > old_term
        # a request at the old term (what the paused one would send) is refused by the nodes
        reply = query(node.control, {"cmd": "set_routes", "term": old_term, "controller": "controller1#0",
                                     "epoch": 10 ** 6}, 2000)
        assert not reply["ok"] and "deposed" in reply["error"], reply
    finally:
        active.proc.send_signal(signal.SIGCONT)
    # the woken one finds its lease lapsed: it stands by, and changes nothing
    st1 = wait_status(active, lambda s: s["controller"]["role"] == "standby"
                      and s["controller"]["active"]["control"] == standby.control, 5.0)
    assert st1["controller"]["counters"].get("route_push_failures", 0) == 0
    assert standby.status()["controller"]["role"] == "active"
    # the first controller, restarted, stands by too
    again = cluster.restart_controller(kill=True, k=0)
    st = wait_status(again, lambda s: s["controller"]["role"] == "standby"
                     and s["controller"]["active"]["control"] == standby.control, 5.0)
    time.sleep(1.0)
    assert standby.status()["controller"]["role"] == "active"
    assert again.status()["controller"]["role"] == "standby"
    reply = query(again.control, {"cmd": "rebalance"}, 2000)
    assert not reply["ok"] and reply["active"] == standby.control
