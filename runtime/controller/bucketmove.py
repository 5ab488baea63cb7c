"""Bucket moves, the controller's side: buckets S go from the pairs that have them to pair B.

A move is done one *leg* per source pair A (the buckets asked for may be
spread over several pairs), each in three steps (the workers' side and why it
is safe: ``runtime/worker/bucketmove.py``):

1. ``hold``: A's primary holds S and answers, once what it processed of S has
   left the node, with S's flows (rows and ``nextExpectedPktID``);
2. ``import``: B's primary takes them in and answers once its secondary has them
   (a 2PC batch);
3. ``switch``: the assignment gives S to B and the routes go out at once.

Pure: the supervisors are reached through ``ask(node, instance, request)``
(a reply dict, or None for no answer) and time is passed in, so the unit
tests drive it through every refusal, crash and delay.

Safety. A's hold lapses ``LEASE_MS`` after it began; the switch must be on
every node before then, or A would go on processing S while B does too. So
the switch goes only while less than ``SWITCH_BY_MS`` has passed since the
first hold request was sent (before A's lease began), which leaves a route
push's whole deadline. A leg that runs out of that time, or whose A or B
primary changed (a failover) in the middle, is cancelled at both and tried
again from the hold, up to ``ATTEMPTS`` times.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

LEASE_MS = 2000.0          # = runtime/worker/bucketmove.LEASE_NS
PUSH_DEADLINE_MS = 500.0   # a route push's deadline (ctl.query_all)
SWITCH_BY_MS = LEASE_MS - PUSH_DEADLINE_MS - 200.0
ATTEMPTS = 5

Ask = Callable[[str, int, dict], "dict | None"]


@dataclasses.dataclass
class Leg:
    source: int                       # pair A
    buckets: list[int]
    move: int                         # the id the workers know this attempt by
    step: str = "hold"                # hold | import | switch
    holder: tuple | None = None       # A's primary (node, instance) when the hold was asked
    importer: tuple | None = None     # B's primary when the import was asked
    first_ask_ms: float | None = None
    payload: str | None = None
    flows: int = 0


class BucketMove:
    """One ``move`` operation's progress; ``step`` is called until it says done or failed."""

    def __init__(self, buckets: list[int], to_pair: int, move_base: int):
        self.buckets = sorted(set(buckets))
        self.to_pair = to_pair
        self.move_base = move_base     # legs and attempts are numbered move_base + 1, + 2, ...
        self.serial = 0
        self.attempts = 0              # of the current leg
        self.leg: Leg | None = None
        self.legs_done = 0
        self.flows_moved = 0
        self.waiting_for: str | None = None

    def _new_leg(self, assignment) -> Leg | None:
        by_source: dict[int, list[int]] = {}
        for b in self.buckets:
            p = assignment.buckets[b]
            if p != self.to_pair:
                by_source.setdefault(p, []).append(b)
        if not by_source:
            return None
        source = min(by_source)
        self.attempts += 1
        self.serial += 1
        return Leg(source, by_source[source], self.move_base + self.serial)

    def step(self, assignment, epoch: int, now_ms: float, ask: Ask) -> str:
        """Take the next step: "done", "failed: <why>", "switch" (the caller pushes the routes now),
        or "wait" (ask again after ``RETRY_MS``)."""
        if self.leg is None:
            self.leg = self._new_leg(assignment)
            if self.leg is None:
                return "done"
        if self.attempts > ATTEMPTS:
            return f"failed: {self.waiting_for or 'no progress'} ({ATTEMPTS} attempts)"
        leg = self.leg
        target = assignment.pairs[self.to_pair]
        source = assignment.pairs[leg.source]
        if target.primary is None or target.secondary is None:
            return self._wait(f"pair {self.to_pair} has no primary and secondary to take the buckets")
        if source.primary is None or source.secondary is None:
            return self._wait(f"pair {leg.source} has no primary and secondary to give the buckets")
        if (leg.holder is not None and leg.holder != source.primary) or (
                leg.importer is not None and leg.importer != target.primary):
            return self._retry(ask, f"a primary of pair {leg.source} or {self.to_pair} changed during the move")
        if leg.first_ask_ms is not None and now_ms - leg.first_ask_ms > SWITCH_BY_MS:
            return self._retry(ask, f"the hold on pair {leg.source} would lapse before the switch")
        if leg.step in ("hold", "import"):
            if leg.step == "hold":
                verdict = self._hold(leg, source.primary, epoch, now_ms, ask)
            else:
                verdict = self._import(leg, target.primary, epoch, ask)
            if verdict.startswith("failed"):
                self._cancel(ask)   # a hold must not wait for its lease
            return verdict
        for b in leg.buckets:   # switch
            assignment.buckets[b] = self.to_pair
        self.flows_moved += leg.flows
        self.legs_done += 1
        self.leg = None
        self.attempts = 0
        self.waiting_for = None
        return "switch"

    def _request(self, leg: Leg, op: str, pair: int, at: tuple, epoch: int, **extra) -> dict:
        return {"cmd": "move", "op": op, "move": leg.move, "pair": pair, "instance": at[1], "epoch": epoch,
                "buckets": leg.buckets, **extra}

    def _hold(self, leg: Leg, at: tuple, epoch: int, now_ms: float, ask: Ask) -> str:
        if leg.first_ask_ms is None:
            leg.first_ask_ms = now_ms
            leg.holder = at
        reply = ask(at[0], at[1], self._request(leg, "hold", leg.source, at, epoch))
        verdict = self._judge(reply, f"hold on pair {leg.source} at {at[0]}/nf{at[1]}")
        if verdict != "done":
            return verdict
        leg.payload = reply["payload"]
        leg.step = "import"
        return self._continue()

    def _import(self, leg: Leg, at: tuple, epoch: int, ask: Ask) -> str:
        leg.importer = at
        reply = ask(at[0], at[1], self._request(leg, "import", self.to_pair, at, epoch, payload=leg.payload))
        verdict = self._judge(reply, f"import into pair {self.to_pair} at {at[0]}/nf{at[1]}")
        if verdict != "done":
            return verdict
        leg.flows = int(reply.get("flows", 0))
        leg.step = "switch"
        return self._continue()

    def _continue(self) -> str:
        self.waiting_for = None
        return "next"

    def _judge(self, reply: dict | None, what: str) -> str:
        if reply is None or not reply.get("ok"):
            return self._wait(f"{what}: no answer" if reply is None else f"{what}: {reply.get('error')}")
        if reply.get("done"):
            return "done"
        if reply.get("retry"):
            return self._wait(f"{what}: {reply.get('reason')}")
        return f"failed: {what}: {reply.get('reason')}"

    def _wait(self, why: str) -> str:
        self.waiting_for = why
        return "wait"

    def _retry(self, ask: Ask, why: str) -> str:
        """Give this attempt up and start again (from the hold, at the pairs' current primaries)."""
        self._cancel(ask)
        self.leg = None
        return self._wait(why)

    def _cancel(self, ask: Ask) -> None:
        """Cancel the current attempt at both ends (best effort: a hold lapses anyway)."""
        leg = self.leg
        for at, pair in ((leg.holder, leg.source), (leg.importer, self.to_pair)):
            if at is not None:
                ask(at[0], at[1], {"cmd": "move", "op": "cancel", "move": leg.move, "pair": pair, "instance": at[1]})

    def report(self) -> dict:
        return {"buckets": len(self.buckets), "to_pair": self.to_pair, "legs_done": self.legs_done,
                "flows_moved": self.flows_moved,
                "step": None if self.leg is None else f"{self.leg.step} (pair {self.leg.source})"}
