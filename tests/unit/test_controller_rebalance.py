"""``rebalance_after_ms``: a failover leaves the dead worker's pairs on their secondaries' workers; once the
restarted worker can take roles again, the controller rebalances by itself (one operation, after the
delay, when nothing else runs) instead of leaving one worker with the traffic of two pairs."""

from __future__ import annotations

import logging

import pytest

from deft.runtime import control
from deft.runtime.controller import main as controller_main
from deft.runtime.controller.main import Controller, ControllerConfig
from deft.runtime.procs.common import StopFlag


def beat(node: str, seq: int, dead: int | None = None, pid0: int = 8) -> dict:
    instances = [{"id": f"{node}/nf{i}", "index": i, "pid": pid0 if i == 0 else 9, "alive": i != dead,
                  "restarts": 0 if pid0 == 8 else 1, "ready": i != dead} for i in (0, 1)]
    return {"node": node, "pid": 7, "seq": seq, "control": f"tcp://{node}:1", "fabric": f"tcp://{node}:2",
            "replication": f"tcp://{node}:3", "copies": "", "buckets": 16, "routes_epoch": 0,
            "instances": instances}


@pytest.fixture
def controller(monkeypatch):
    made = []

    def make(rebalance_after_ms: int):
        cfg = ControllerConfig(source="t", control="tcp://127.0.0.1:*", heartbeats="tcp://127.0.0.1:*",
                               heartbeat_ms=10, miss_limit=5, fresh_grace_ms=500, manage_routes=True,
                               expect_nodes=2, rebalance_after_ms=rebalance_after_ms)
        monkeypatch.setattr(control, "query_all", lambda nodes, req, timeout: {n: {"ok": True} for n in nodes})
        clock = [1000.0]
        monkeypatch.setattr(controller_main, "now_ms", lambda: clock[0])
        c = Controller(cfg, StopFlag(), logging.getLogger("t"))
        made.append(c)
        c.recovery_done = True                       # a new cluster: nothing to take back
        for node in ("n1", "n2"):
            c.view.on_heartbeat(beat(node, 1), clock[0])
        assert c.update_assignment() and c.assignment.placed
        return c, clock

    yield make
    for c in made:
        c.close()


def primaries(c: Controller) -> dict[str, int]:
    count: dict[str, int] = {}
    for pair in c.assignment.pairs:
        count[pair.primary[0]] = count.get(pair.primary[0], 0) + 1
    return count


def fail_and_restart_n1_worker(c: Controller, clock: list) -> None:
    c.maybe_rebalance(clock[0] + 10_000)             # the first placement's due rebalance: spread already
    assert c.operations.current is None
    clock[0] += 10
    c.view.on_heartbeat(beat("n1", 2, dead=0), clock[0])   # its worker 0 died: pairs to their secondaries
    c.update_assignment()
    assert primaries(c) == {"n1": 1, "n2": 3}
    clock[0] += 300
    c.view.on_heartbeat(beat("n1", 3, pid0=80), clock[0])  # restarted, ready: it can take roles again
    c.update_assignment()


def test_a_restarted_worker_gets_pairs_back_by_a_rebalance_after_the_delay(controller):
    c, clock = controller(rebalance_after_ms=500)
    fail_and_restart_n1_worker(c, clock)
    c.maybe_rebalance(clock[0] + 499)
    assert c.operations.current is None              # not yet
    c.routes_due = True
    c.maybe_rebalance(clock[0] + 500)
    assert c.operations.current is None              # routes not pushed yet: after them
    c.routes_due = False
    c.maybe_rebalance(clock[0] + 560)
    op = c.operations.current
    assert op is not None and op.kind == "rebalance"
    assert [e for e in c.view.events if e["event"] == "rebalance_started"][0]["operation"] == op.id


def test_without_the_setting_nothing_moves_by_itself(controller):
    c, clock = controller(rebalance_after_ms=0)
    fail_and_restart_n1_worker(c, clock)
    c.maybe_rebalance(clock[0] + 60_000)
    assert c.operations.current is None and primaries(c) == {"n1": 1, "n2": 3}


def test_a_joining_node_waits_for_the_operators_rebalance_and_an_ask_joins_a_running_one(controller):
    """The README's scaling steps stay the operator's: a node that joins moves nothing by itself (its
    ``rebalance --wait`` and the ``drain`` after it would meet a running operation). A ``rebalance``
    asked while one the controller started runs gets that one."""
    c, clock = controller(rebalance_after_ms=500)
    c.maybe_rebalance(clock[0] + 10_000)
    c.view.on_heartbeat(beat("n3", 1), clock[0])          # n3 joins: it can take roles, never failed
    c.update_assignment()
    c.maybe_rebalance(clock[0] + 10_000)
    assert c.operations.current is None
    clock[0] += 10
    c.view.on_heartbeat(beat("n1", 2, dead=0), clock[0])   # a worker dies and comes back: that moves
    c.update_assignment()
    c.view.on_heartbeat(beat("n1", 3, pid0=80), clock[0] + 300)
    c.update_assignment()
    c.maybe_rebalance(clock[0] + 1000)
    op = c.operations.current
    assert op is not None and op.kind == "rebalance"
    assert c.rebalance({})["id"] == op.id
