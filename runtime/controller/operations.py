"""The controller's planned operations: ``drain`` a node, ``rebalance`` the pairs (one at a time).

Each operation is a loop of steps planned by ``moves.py`` and carried out
here, between the controller's other work (its loop calls ``advance``):

* a ``Secondary`` step changes the assignment; the route push that follows
  makes the primary Sync its new secondary;
* a ``HandOver`` step first asks the primary's supervisor to freeze the pair
  (``{"cmd": "freeze"}``, see ``runtime/worker/freeze.py``). Refused for a
  reason worth waiting out (its secondary is still syncing), it is asked
  again ``RETRY_MS`` later; frozen, the assignment hands the pair to its
  secondary with the frozen primary's last released batch as the decision,
  and the routes are pushed at once (the freeze lapses after two seconds).

A step starts only when the last route change is out (no push pending), so
a Secondary step's routes reach the nodes before the hand-over that needs
them. An operation fails (with a message that says where) on a Blocked
plan, a refusal not worth waiting out, or ``DEADLINE_MS`` without an end.
``deft-ctl ... --wait`` polls ``{"cmd": "operation", "id": N}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from deft.runtime.controller.bucketmove import BucketMove
from deft.runtime.controller.moves import Blocked, HandOver, Secondary, apply_step, drain_step, rebalance_step

RETRY_MS = 20.0
DEADLINE_MS = 60_000.0
KEEP_FINISHED = 20   # finished operations kept for status


@dataclasses.dataclass
class Operation:
    id: int
    kind: str                 # "drain" | "rebalance" | "move"
    node: str | None
    started_ms: float
    state: str = "running"    # running | done | failed
    error: str | None = None
    steps: int = 0
    hand_overs: int = 0
    finished_ms: float | None = None
    retry_at_ms: float = 0.0
    waiting_for: str | None = None   # why the current step waits (status)
    bucket_move: BucketMove | None = None   # a move's progress
    origin: str = "operator"                # or "autoscale"

    def report(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("retry_at_ms", "bucket_move")}
        if self.bucket_move is not None:
            out["move"] = self.bucket_move.report()
        return out


class Operations:
    """Start, advance and report operations; the controller supplies the I/O.

    ``freeze(node_id, instance, pair)`` -> the supervisor's reply (a dict) or None (no answer);
    ``ask(node_id, instance, request)`` -> likewise for any request (a bucket move's steps);
    ``push()`` pushes the routes now (after an assignment change); ``usable()`` the instances that
    may take roles (a draining node's excluded).
    """

    def __init__(self, controller, freeze: Callable[[str, int, int], dict | None], log,
                 ask: Callable[[str, int, dict], dict | None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.controller = controller
        self.freeze = freeze
        self.ask = ask
        self.clock = clock   # ms; a move's steps take RPCs, and its switch must go in time (bucketmove.py)
        self.log = log
        self.ops: list[Operation] = []
        self.draining: set[str] = set()   # nodes that take no role (a drain runs or ran; until undrain)

    @property
    def current(self) -> Operation | None:
        return next((op for op in self.ops if op.state == "running"), None)

    def start(self, kind: str, node: str | None, now_ms: float, buckets: list[int] | None = None,
              to_pair: int | None = None) -> Operation:
        running = self.current
        if running is not None:
            raise ValueError(f"operation {running.id} ({running.kind}) is still running")
        op = Operation(len(self.ops) + 1 if not self.ops else self.ops[-1].id + 1, kind, node, now_ms)
        if kind == "move":
            # the workers tell attempts apart by id: unique per controller run and operation
            op.bucket_move = BucketMove(buckets, to_pair, (int(now_ms * 1000) % (1 << 40)) << 12)
        if kind == "drain":
            self.draining.add(node)
        self.ops.append(op)
        self.log.info("operation %d: %s%s started", op.id, kind, f" {node}" if node else "")
        finished = [o for o in self.ops if o.state != "running"]
        for old in finished[:-KEEP_FINISHED]:
            self.ops.remove(old)
        return op

    def undrain(self, node: str) -> None:
        running = self.current
        if running is not None and running.kind == "drain" and running.node == node:
            raise ValueError(f"operation {running.id} is draining {node}")
        self.draining.discard(node)

    def get(self, op_id: int) -> Operation | None:
        return next((op for op in self.ops if op.id == op_id), None)

    def advance(self, now_ms: float) -> None:
        """Take the current operation's next step if it may go now."""
        op = self.current
        if op is None or now_ms < op.retry_at_ms or self.controller.routes_due:
            return
        if now_ms - op.started_ms > DEADLINE_MS:
            self.finish(op, now_ms, f"no end after {DEADLINE_MS / 1000:.0f} s ({op.waiting_for or 'planning'})")
            return
        assignment = self.controller.assignment
        if op.kind == "move":
            self.move_step(op, now_ms)
            return
        usable = self.controller.usable()
        step = drain_step(assignment, op.node, usable) if op.kind == "drain" else rebalance_step(assignment, usable)
        if step is None:
            self.finish(op, now_ms)
        elif isinstance(step, Blocked):
            self.finish(op, now_ms, step.reason)
        elif isinstance(step, Secondary):
            apply_step(assignment, step)
            op.steps += 1
            op.waiting_for = None
            self.controller.routes_due = True
        else:
            self.hand_over(op, step, now_ms)

    def hand_over(self, op: Operation, step: HandOver, now_ms: float) -> None:
        pair = self.controller.assignment.pairs[step.pair]
        node, instance = pair.primary
        reply = self.freeze(node, instance, step.pair)
        if reply is None or not reply.get("ok"):
            op.waiting_for = f"pair {step.pair}: {node}/nf{instance} did not answer the freeze"
            op.retry_at_ms = now_ms + 100.0
            return
        if not reply.get("frozen"):
            op.waiting_for = f"pair {step.pair}: {reply.get('reason')}"
            if not reply.get("retry"):
                self.finish(op, now_ms, f"pair {step.pair} cannot be handed over: {reply.get('reason')}")
                return
            op.retry_at_ms = now_ms + RETRY_MS
            return
        apply_step(self.controller.assignment, step, decision=int(reply["batch"]))
        op.steps += 1
        op.hand_overs += 1
        op.waiting_for = None
        self.controller.routes_due = True
        self.controller.push_routes_now()   # the frozen primary holds the pair's output until this lands
        self.log.info("operation %d: pair %d handed over from %s/nf%d to %s/nf%d after batch %d", op.id,
                      step.pair, node, instance, *pair.primary, reply["batch"])

    def move_step(self, op: Operation, now_ms: float) -> None:
        """A bucket move's next steps (``bucketmove.py``), as many as can go now."""
        move = op.bucket_move
        while True:
            now_ms = self.clock() if self.clock is not None else now_ms
            verdict = move.step(self.controller.assignment, self.controller.routes_epoch, now_ms, self.ask)
            op.waiting_for = move.waiting_for
            if verdict == "next":
                op.steps += 1
                continue
            if verdict == "switch":
                op.steps += 1
                self.controller.routes_due = True
                self.controller.push_routes_now()   # the held buckets wait for it
                self.log.info("operation %d: buckets moved to pair %d (%d flows so far)", op.id, move.to_pair,
                              move.flows_moved)
                return
            if verdict == "done":
                self.finish(op, now_ms)
            elif verdict.startswith("failed"):
                self.finish(op, now_ms, verdict.partition(": ")[2])
            else:
                op.retry_at_ms = now_ms + RETRY_MS
            return

    def finish(self, op: Operation, now_ms: float, error: str | None = None) -> None:
        op.state, op.error, op.finished_ms, op.waiting_for = ("failed" if error else "done"), error, now_ms, None
        if error:
            self.log.warning("operation %d (%s) failed: %s", op.id, op.kind, error)
        else:
            self.log.info("operation %d (%s) done: %d steps, %d hand-overs, %.0f ms", op.id, op.kind, op.steps,
                          op.hand_overs, now_ms - op.started_ms)

    def persistent(self) -> dict[str, Any]:
        """What a restarted controller needs to go on (it rides on every route set: ``recover``)."""
        op = self.current
        running = None
        if op is not None:
            running = {"kind": op.kind, "node": op.node}
            if op.bucket_move is not None:
                running.update(buckets=op.bucket_move.buckets, to_pair=op.bucket_move.to_pair)
        return {"draining": sorted(self.draining), "operation": running}

    def recover(self, state: dict[str, Any], now_ms: float) -> Operation | None:
        """Take back what ``persistent`` said: the drained nodes, and the operation that ran (started
        again: each of its steps is planned from the assignment as it is, so it goes on where it was)."""
        self.draining = set(state.get("draining") or [])
        running = state.get("operation")
        if not running:
            return None
        return self.start(running["kind"], running.get("node"), now_ms, buckets=running.get("buckets"),
                          to_pair=running.get("to_pair"))

    def moving_pairs(self) -> set[int]:
        """The pairs a running bucket move is taking buckets from or giving them to now."""
        op = self.current
        if op is None or op.bucket_move is None or op.bucket_move.leg is None:
            return set()
        return {op.bucket_move.leg.source, op.bucket_move.to_pair}

    def status(self) -> dict[str, Any]:
        return {"operations": [op.report() for op in self.ops], "draining": sorted(self.draining)}
