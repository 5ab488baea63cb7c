"""A restarted controller takes its assignment back from the nodes' route sets; a node of those routes
whose beats have not come yet is not taken as failed while it may only be reconnecting."""

from __future__ import annotations

import logging

import pytest

from deft.runtime import control
from deft.runtime.controller import main as controller_main
from deft.runtime.controller.main import Controller, ControllerConfig
from deft.runtime.controller.placement import place
from deft.runtime.procs.common import StopFlag


def beat(node: str) -> dict:
    return {"node": node, "pid": 7, "seq": 1, "control": f"tcp://{node}:1", "fabric": f"tcp://{node}:2",
            "replication": "", "copies": "", "buckets": 16, "routes_epoch": 3,
            "instances": [{"id": f"{node}/nf0", "index": 0, "pid": 8, "alive": True, "restarts": 0, "ready": True}]}


@pytest.fixture
def restarted(monkeypatch):
    """A controller started now beside nodes n1 and n2 that hold routes over both; only n1 has beaten."""
    cfg = ControllerConfig(source="t", control="tcp://127.0.0.1:*", heartbeats="tcp://127.0.0.1:*",
                           heartbeat_ms=10, miss_limit=5, fresh_grace_ms=500, manage_routes=True, expect_nodes=2)
    routes = place([("n1", "tcp://n1:2", 1), ("n2", "tcp://n2:2", 1)], 16, 3)
    monkeypatch.setattr(control, "query_all",
                        lambda nodes, req, timeout: {n: {"ok": True, "routes": routes} for n in nodes})
    clock = [1000.0]
    monkeypatch.setattr(controller_main, "now_ms", lambda: clock[0])
    c = Controller(cfg, StopFlag(), logging.getLogger("t"))
    try:
        c.view.on_heartbeat(beat("n1"), clock[0])
        c.recovering_since = clock[0]      # as the loop does at the first beat
        yield c, clock
    finally:
        c.close()


def test_a_node_still_reconnecting_is_waited_for_not_failed(restarted):
    c, clock = restarted
    clock[0] += 110                        # past the beats' wait, within ZeroMQ's reconnect interval
    assert c.recover() is None and not c.recovery_done
    c.view.on_heartbeat(beat("n2"), clock[0])   # its connection is back
    clock[0] += 10
    assert c.recover() is True
    assert c.handled_nodes == set()        # nobody failed over


def test_a_node_silent_past_reconnect_and_detection_is_failed_over(restarted):
    c, clock = restarted
    clock[0] += 110
    assert c.recover() is None
    clock[0] += c.silent_grace_ms()        # 100 ms of reconnecting and 10 ms x 5 of detection: gone
    assert c.recover() is True and c.handled_nodes == {"n2"}
