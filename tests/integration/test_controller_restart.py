"""A controller restart keeps the assignment: the new controller takes the route set back from the
nodes (buckets moved, pairs failed over and handed over since the first placement stay where they
are), goes on detecting failures and moving, and the traffic loses nothing."""

from __future__ import annotations

import time

import pytest

from deft.tools.ctl import query
from deft.tools.drills import healthy, run_operation, start_traffic, traffic_report, wait_for

from .test_failover import IN_FLIGHT_PER_KILL, assert_no_harm, controller_status, running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, "cr")


def placement(st: dict) -> list[tuple]:
    return [(p["pair"], p["primary"], p["secondary"], p["buckets"]) for p in st["pairs"]]


@pytest.mark.long   # the standby test takes over the same way (recover), mid-move, then a failure
def test_a_restarted_controller_keeps_the_assignment_and_goes_on(cluster, tmp_path):
    gen = start_traffic(cluster, tmp_path / "report.json", 1000, 2000, 9.0)
    try:
        time.sleep(1.0)
        op = run_operation(cluster, {"cmd": "move", "buckets": list(range(1, 4096, 6)), "to_pair": 0})
        assert op["state"] == "done", op
        victim = next(p for p in controller_status(cluster)["pairs"] if p["pair"] == 3)["primary"]
        query(cluster.ctl.control, {"cmd": "fail", "what": "nf", "id": victim}, 3000)
        before = placement(wait_for(cluster, lambda st: healthy(st) and all(
            p["primary"] != victim for p in st["pairs"] if p["pair"] == 3), timeout=10))
        cluster.restart_controller(kill=True)
        after = wait_for(cluster, healthy, timeout=15)
        assert placement(after) == before                    # nothing placed afresh, nothing moved back
        assert [e for e in after["events"] if e["event"] == "assignment_recovered"]
        # it goes on: a failure is taken over, a move runs
        victim2 = next(p for p in after["pairs"] if p["pair"] == 5)["primary"]
        query(cluster.ctl.control, {"cmd": "fail", "what": "nf", "id": victim2}, 3000)
        wait_for(cluster, lambda st: healthy(st) and next(p for p in st["pairs"] if p["pair"] == 5)["primary"]
                 != victim2, timeout=10)
        op = run_operation(cluster, {"cmd": "move", "buckets": list(range(1, 4096, 6)), "to_pair": 1})
        assert op["state"] == "done", op
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert_no_harm(report, cluster, duplicates_allowed=2 * IN_FLIGHT_PER_KILL)   # two workers SIGKILLed
