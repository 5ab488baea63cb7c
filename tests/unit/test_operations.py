"""The controller's operations (runtime/controller/operations.py) against a scripted controller:
steps wait for route pushes, hand-overs wait for a synced secondary, refusals end an operation
with a message that says why, and only one runs at a time."""

from __future__ import annotations

import logging

import pytest

from deft.runtime.controller.operations import DEADLINE_MS, RETRY_MS, Operations
from deft.runtime.controller.placement import Assignment


class FakeController:
    def __init__(self, nodes: dict[str, int]):
        self.assignment = Assignment(64)
        self.assignment.place(nodes)
        self.instances = sorted((n, i) for n, k in nodes.items() for i in range(k))
        self.assignment.fill(self.instances)
        self.routes_due = False
        self.pushes = 0
        self.ops: Operations | None = None

    def usable(self):
        return [u for u in self.instances if u[0] not in self.ops.draining]

    def push_routes_now(self):
        self.pushes += 1
        self.routes_due = False


def run(ops: Operations, ctl: FakeController, now: float = 0.0, limit: int = 500) -> float:
    """Advance until the operation ends; route pushes land between steps."""
    for _ in range(limit):
        if ops.current is None:
            return now
        if ctl.routes_due:
            ctl.push_routes_now()
        ops.advance(now)
        now += RETRY_MS
    raise AssertionError("no end")


def make(nodes: dict[str, int], freeze):
    ctl = FakeController(nodes)
    ops = Operations(ctl, freeze, logging.getLogger("test"))
    ctl.ops = ops
    return ctl, ops


def test_a_drain_freezes_each_primary_and_hands_it_over_with_its_decision():
    asked = []

    def freeze(node, instance, pair):
        asked.append((node, instance, pair))
        return {"ok": True, "frozen": True, "batch": 40 + pair}

    ctl, ops = make({"n1": 2, "n2": 2, "n3": 2}, freeze)
    op = ops.start("drain", "n2", 0.0)
    run(ops, ctl)
    assert op.state == "done" and op.hand_overs == 2 and ops.draining == {"n2"}
    assert sorted(p for _, _, p in asked) == [k for k, p in enumerate(ctl.assignment.pairs) if p.decision >= 40]
    assert all("n2" not in (p.primary[0], p.secondary[0]) for p in ctl.assignment.pairs)
    assert all(ctl.assignment.pairs[p].decision == 40 + p for _, _, p in asked)


def test_a_hand_over_waits_while_the_secondary_syncs_then_goes():
    answers = iter([{"ok": True, "frozen": False, "reason": "its secondary is not synced yet", "retry": True}] * 3)

    def freeze(node, instance, pair):
        return next(answers, {"ok": True, "frozen": True, "batch": 7})

    ctl, ops = make({"n1": 2, "n2": 2, "n3": 2}, freeze)
    ctl.instances += [("n4", 0), ("n4", 1)]          # examples/cluster/node4.toml joins
    op = ops.start("rebalance", None, 0.0)
    run(ops, ctl)
    assert op.state == "done" and op.hand_overs == 1 and op.steps >= 2   # a secondary there first
    assert sum(p.primary[0] == "n4" for p in ctl.assignment.pairs) == 1


def test_a_refusal_not_worth_waiting_fails_the_operation_and_says_why():
    ctl, ops = make({"n1": 1, "n2": 1, "n3": 1},
                    lambda *a: {"ok": True, "frozen": False, "reason": "the pair has no secondary", "retry": False})
    op = ops.start("drain", "n1", 0.0)
    run(ops, ctl)
    assert op.state == "failed" and "cannot be handed over: the pair has no secondary" in op.error


def test_an_operation_that_never_ends_fails_at_its_deadline():
    ctl, ops = make({"n1": 1, "n2": 1, "n3": 1}, lambda *a: None)   # the primary's node never answers
    op = ops.start("drain", "n1", 0.0)
    run(ops, ctl, limit=int(DEADLINE_MS / RETRY_MS) + 100)
    assert op.state == "failed" and "did not answer the freeze" in op.error


def test_one_operation_at_a_time_and_undrain_only_when_not_draining():
    ctl, ops = make({"n1": 1, "n2": 1, "n3": 1}, lambda *a: {"ok": True, "frozen": True, "batch": 1})
    ops.start("drain", "n1", 0.0)
    with pytest.raises(ValueError, match="still running"):
        ops.start("rebalance", None, 0.0)
    with pytest.raises(ValueError, match="is draining n1"):
        ops.undrain("n1")
    run(ops, ctl)
    ops.undrain("n1")
    assert ops.draining == set() and ops.status()["operations"][0]["state"] == "done"


def test_what_rides_on_the_routes_brings_a_restarted_controller_back_to_its_operation():
    ctl, ops = make({"n1": 2, "n2": 2, "n3": 2}, lambda *a: {"ok": True, "frozen": True, "batch": 1})
    ops.start("drain", "n2", 0.0)
    state = ops.persistent()
    assert state == {"draining": ["n2"], "operation": {"kind": "drain", "node": "n2"}}
    ctl2, ops2 = make({"n1": 2, "n2": 2, "n3": 2}, lambda *a: {"ok": True, "frozen": True, "batch": 1})
    op = ops2.recover(state, 5.0)
    assert op.kind == "drain" and op.node == "n2" and ops2.draining == {"n2"}
    ctl3, ops3 = make({"n1": 2, "n2": 2, "n3": 2}, lambda *a: None)
    assert ops3.recover({"draining": ["n3"], "operation": None}, 6.0) is None and ops3.draining == {"n3"}


def test_a_move_rides_on_the_routes_with_its_buckets():
    ctl, ops = make({"n1": 2, "n2": 2}, lambda *a: None)
    ops.start("move", None, 0.0, buckets=[3, 1, 2], to_pair=2)
    assert ops.persistent()["operation"] == {"kind": "move", "node": None, "buckets": [1, 2, 3], "to_pair": 2}
