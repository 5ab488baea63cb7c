"""A simulated primary/secondary pair around the pure replication cores.

Everything random comes from one ``random.Random(seed)``, so a failing
schedule reruns exactly from its seed. The pieces:

* a switch that sends each input packet to the primary's endpoint and a
  duplicate to the secondary's (routes change when the controller says so);
* channels that delay, reorder and duplicate everything, and drop P<->S
  messages (never packets: the paper assumes no packet loss, and a lost
  duplicate of a packet only the dead primary had is unrecoverable);
* node models: a primary node's supervisor owns the commit record, the
  staged outputs and the egress queue (a worker crash keeps them: the
  supervisor releases those <= the record and the egress sends its queue; a
  node crash loses them all). A ``Release`` hands the output to the egress,
  which sends it some steps later and only then reports ``output_sent``;
* a controller that detects a crash after a short delay, runs take-over or
  a resync with a fresh secondary, and moves the routes; it starts a sync
  only once the old routes have drained. A second failure is armed only
  once the pair is redundant again (one failure at a time).

The model primaries process packets in switch order (global index), so the
NF's cross-flow decisions (ports) are a function of the input alone and a
failure-free reference run predicts every output and the final state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from deft.runtime.replication import (
    Delta,
    Packets,
    PrimaryReplicator,
    Refused,
    Release,
    SecondaryReplica,
    Send,
    WriteDecision,
    make_stamps,
)

from .channel import Channel
from .guarantees import check
from .model import ModelNF, Output, Packet, make_input, new_table, reference_run

PAIR = 7
P_POINTS = PrimaryReplicator.CRASH_POINTS
S_POINTS = SecondaryReplica.CRASH_POINTS


class Crashed(Exception):
    """The process whose action is running dies here."""


class Abort(Exception):
    """The run cannot go on (a take-over plan the model cannot execute); the message is the error."""


@dataclass
class Arm:
    """Crash ``role`` ('P' or 'S') the ``n``-th time it reaches ``point`` ('random': at step n)."""

    role: str
    point: str
    n: int
    node: bool = False  # P only: the whole node dies (commit record and staged outputs lost)


@dataclass
class Endpoint:
    """One NF worker's mailbox; ``prim`` or ``sec`` says its current role."""

    name: str
    packets: Channel
    msgs: Channel
    alive: bool = True
    prim: PrimaryWorker | None = None
    sec: SecondaryReplica | None = None


@dataclass
class PrimaryWorker:
    """The NF, its state, and the replicator; the node's commit record and staged outputs beside it."""

    repl: PrimaryReplicator
    table: object
    nf: ModelNF
    next_expected: dict[int, int]
    next_g: int
    inbox: dict[int, Packet] = field(default_factory=dict)
    inputs: dict[int, dict[tuple[int, int], Packet]] = field(default_factory=dict)
    record: int = 0                                   # supervisor-owned commit record
    staged: dict[int, list[Output]] = field(default_factory=dict)   # supervisor-owned staged outputs
    egress: list[tuple[int, list[Output]]] = field(default_factory=list)   # released, not yet sent


class Sim:
    """One schedule: a seeded input, network and crash plan; ``run()`` then ``errors`` (empty: all guarantees held)."""

    primary_class = PrimaryReplicator   # tests swap in a broken variant to show the checks bite

    def __init__(self, seed: int, arms: list[Arm], replay_decided: bool = False) -> None:
        self.seed = seed
        rng = self.rng = random.Random(seed)
        big = rng.random() < 0.2   # now and then enough traffic to keep the whole window busy
        self.input = make_input(rng, rng.randint(2, 20 if big else 8), rng.randint(1, 30 if big else 12))
        self.ref_out, self.ref_table = reference_run(self.input)
        self.arms = list(arms)
        self.arms_desc = repr(arms)
        self.finished = False
        self.replay_decided = replay_decided
        self.window = rng.randint(1, 4)
        self.retransmit = rng.randint(2, 4)
        self.msg_drop = rng.choice((0.0, 0.05, 0.2))
        self.dup = rng.choice((0.0, 0.05, 0.2))
        self.delay = rng.randint(0, 4)
        # duplicates may lag far behind the Prepares that need them (packets and prepares race)
        self.dup_delay = rng.choice((self.delay, 8))
        self.released: list[Output] = []
        self.in_doubt: set[tuple[int, int]] = set()
        self.node_crash = False
        self.crashed_at: list[str] = []
        self.errors: list[str] = []
        self.reached: dict[str, int] = {}
        self.events: list[tuple[int, str, object]] = []   # (due step, kind, data) for the controller
        self.epoch = 1
        self.sw = 0
        self.step_no = 0
        self.endpoints: list[Endpoint] = []
        self.p_ep = self._endpoint("A")
        self.s_ep = self._endpoint("B")
        self.p_ep.prim = PrimaryWorker(self.primary_class(self.epoch, PAIR, window=self.window,
                                                         retransmit_ticks=self.retransmit),
                                       new_table(), ModelNF(), {}, 0)
        self.s_ep.sec = SecondaryReplica(self.epoch, PAIR, new_table())
        self.route_p: Endpoint | None = self.p_ep
        self.route_s: Endpoint | None = self.s_ep

    def _endpoint(self, name: str) -> Endpoint:
        ep = Endpoint(name, Channel(self.rng, 0.0, self.dup, self.dup_delay),
                      Channel(self.rng, self.msg_drop, self.dup, self.delay))
        self.endpoints.append(ep)
        return ep

    # -- crash injection -------------------------------------------------------------------------

    def _reach(self, ep: Endpoint, point: str | None) -> None:
        if point is None or not self.arms:
            return
        role = "P" if ep.prim is not None else "S"
        arm = self.arms[0]
        if arm.role != role or arm.point != point or not self._armed():
            return
        self.reached[point] = self.reached.get(point, 0) + 1
        if self.reached[point] == arm.n:
            raise Crashed(point)

    def _armed(self) -> bool:
        # One failure at a time: the next one only once the pair is redundant again.
        return not self.events and self.s_ep is not None and self.s_ep.sec is not None and self.s_ep.sec.synced

    def _crash(self, ep: Endpoint, point: str) -> None:
        arm = self.arms.pop(0)
        self.reached = {}
        ep.alive = False
        self.crashed_at.append(f"{arm.role}:{point}{':node' if arm.node else ''}")
        kind = "p_failed" if ep.prim is not None else "s_failed"
        self.events.append((self.step_no + self.rng.randint(0, 4), kind, (ep, arm.node)))

    # -- actions ---------------------------------------------------------------------------------

    def _run(self, ep: Endpoint, actions: list) -> None:
        """Execute actions in order; a crash point after any of them may kill ``ep``."""
        for a in actions:
            if isinstance(a, Send):
                msg = a.message
                if isinstance(msg, Packets):
                    inputs = ep.prim.inputs[msg.batch]
                    msg = Packets(msg.epoch, msg.pair, msg.batch, msg.stamps,
                                  tuple(inputs[k] for k in zip(msg.stamps["flow_id"].tolist(),
                                                                msg.stamps["seq"].tolist())))
                peer = self.s_ep if ep.prim is not None else self.p_ep
                if peer is not None:
                    peer.msgs.put(self.step_no, msg)
            elif isinstance(a, WriteDecision):
                w = ep.prim
                if a.batch < w.record:
                    self.errors.append(f"commit record went back from {w.record} to {a.batch}")
                w.record = a.batch
            elif isinstance(a, Release):
                ep.prim.egress.append((a.batch, ep.prim.staged.pop(a.batch)))
                ep.prim.inputs.pop(a.batch, None)
            elif isinstance(a, Refused):
                pass
            self._reach(ep, a.crash_point)

    def _release(self, outputs: list[Output]) -> None:
        self.released.extend(outputs)

    def _egress(self, ep: Endpoint) -> None:
        """The node's egress sends what was released, oldest first, then tells the worker."""
        w = ep.prim
        while w.egress and self.rng.random() < 0.6:
            t, outputs = w.egress.pop(0)
            self._release(outputs)
            self._run(ep, w.repl.output_sent(t))

    # -- the primary's work ----------------------------------------------------------------------

    def _process(self, ep: Endpoint) -> None:
        w = ep.prim
        if not w.repl.window_open:
            return
        packets = []
        for _ in range(self.rng.randint(1, 6)):
            p = w.inbox.pop(w.next_g, None)
            if p is None:
                break
            packets.append(p)
            w.next_g += 1
        if not packets:
            return
        outputs = w.nf.process(w.table, packets)
        for p in packets:
            w.next_expected[p.flow] = p.seq + 1
        t = w.repl.next_batch
        w.staged[t] = outputs   # where the supervisor's egress reaches it, before on_batch
        w.inputs[t] = {(p.flow, p.seq): p for p in packets}
        stamps = make_stamps([p.flow for p in packets], [p.seq for p in packets])
        self._run(ep, w.repl.on_batch(t, stamps, Delta.capture(w.table, w.next_expected, stamps)))

    def _sync(self, ep: Endpoint) -> None:
        w = ep.prim
        self.epoch += 1
        pending = [w.inbox[g] for g in sorted(w.inbox)]
        ne = w.next_expected
        actions = w.repl.start_sync(
            self.epoch, w.table.export_rows(w.table.live_rows()),
            np.array(list(ne), dtype=np.uint64), np.array(list(ne.values()), dtype=np.uint64),
            make_stamps([p.flow for p in pending], [p.seq for p in pending]), tuple(pending))
        self._run(ep, actions)

    # -- failures --------------------------------------------------------------------------------

    def _controller(self) -> None:
        while (due := next((e for e in self.events if e[0] <= self.step_no), None)) is not None:
            self.events.remove(due)   # before handling: a crash inside leaves the others queued
            getattr(self, "_on_" + due[1])(*due[2])

    def _on_p_failed(self, dead: Endpoint, node: bool) -> None:
        w = dead.prim
        if node:
            self.node_crash = True
            decision = None
        else:   # the supervisor survives: its egress releases what the record says is committed
            decision = w.record
            for _, outputs in w.egress:
                self._release(outputs)
            for t in sorted(w.staged):
                if t <= decision:
                    self._release(w.staged[t])
        b = self.s_ep
        plan = b.sec.take_over(decision, replay_decided=self.replay_decided)
        payloads = [p for r in plan.replays for p in r.payloads] + list(plan.rest_payloads)
        if not all(isinstance(p, Packet) for p in payloads):
            raise Abort("take-over plan names a packet the secondary never had")
        nf = ModelNF()
        nf.rebuild(plan.table)
        ne = dict(plan.next_expected)
        for r in plan.replays:
            packets = list(r.payloads)
            if [(getattr(p, "flow", None), getattr(p, "seq", None)) for p in packets] != list(
                    zip(r.stamps["flow_id"].tolist(), r.stamps["seq"].tolist())):
                raise Abort(f"replay {r.batch}: payloads do not match stamps")
            outputs = nf.process(plan.table, packets)
            for p in packets:
                ne[p.flow] = p.seq + 1
            for o in outputs:
                if o != self.ref_out[(o[0], o[1])]:
                    self.errors.append(f"replay {r.batch} output {o} != reference {self.ref_out[(o[0], o[1])]}")
            if r.release:
                self._release(outputs)
            if r.batch in plan.in_doubt:
                self.in_doubt.update((p.flow, p.seq) for p in packets)
        plan.table.take_changes()
        processed = sum(v - 1 for v in ne.values())
        if any(p.seq >= ne.get(p.flow, 1) for p in self.input[:processed]):
            self.errors.append("the state after take-over is not a prefix of the input")
        repl = self.primary_class(self.epoch, PAIR, window=self.window, retransmit_ticks=self.retransmit,
                                 last_batch=plan.last_batch, has_secondary=False)
        nw = PrimaryWorker(repl, plan.table, nf, ne, processed, record=plan.last_batch)
        nw.inbox = {p.g: p for p in plan.rest_payloads if p.g >= processed}
        b.sec, b.prim = None, nw
        self.p_ep, self.s_ep = b, None
        self._new_secondary()

    def _on_s_failed(self, dead: Endpoint, node: bool) -> None:
        self._run(self.p_ep, self.p_ep.prim.repl.secondary_lost())
        self._new_secondary()

    def _new_secondary(self) -> None:
        """The controller: a fresh secondary, duplicates routed to it, then (a little later) the sync."""
        c = self._endpoint(f"N{len(self.endpoints)}")
        c.sec = SecondaryReplica(self.epoch + 1, PAIR, new_table(), synced=False)
        self.s_ep = c
        self.route_p, self.route_s = self.p_ep, c
        # Wait until packets in flight on the old routes have arrived (channel delay <= dup_delay):
        # the sync hands the new secondary what the primary holds, so it must hold all of them.
        self.events.append((self.step_no + self.dup_delay + 1 + self.rng.randint(0, 3), "sync", (c, False)))

    def _on_sync(self, c: Endpoint, _unused: bool) -> None:
        if self.p_ep.alive and c is self.s_ep:
            self._sync(self.p_ep)

    # -- the loop --------------------------------------------------------------------------------

    def _switch(self) -> None:
        for _ in range(self.rng.randint(0, 2)):
            if self.sw == len(self.input):
                return
            p = self.input[self.sw]
            self.sw += 1
            if self.route_p is not None:
                self.route_p.packets.put(self.step_no, p)
            if self.route_s is not None:
                self.route_s.packets.put(self.step_no, p)

    def _deliver(self, ep: Endpoint) -> None:
        packets = ep.packets.due(self.step_no)
        msgs = ep.msgs.due(self.step_no)
        if not ep.alive:
            return
        if ep.prim is not None:
            w = ep.prim
            for p in packets:
                if p.g >= w.next_g:
                    w.inbox[p.g] = p
            for m in msgs:
                actions = w.repl.step(m)
                self._reach(ep, w.repl.received_point(m))
                self._run(ep, actions)
        elif ep.sec is not None:
            s = ep.sec
            if packets:
                self._run(ep, s.on_packets(make_stamps([p.flow for p in packets], [p.seq for p in packets]),
                                           tuple(packets)))
            for m in msgs:
                actions = s.step(m)
                self._reach(ep, s.received_point(m))
                self._run(ep, actions)

    def _done(self) -> bool:
        w = self.p_ep.prim
        s = self.s_ep.sec if self.s_ep is not None else None
        return (self.sw == len(self.input) and not self.events and w.next_g == len(self.input)
                and w.repl.in_flight == 0 and not w.repl.holding and s is not None and s.synced
                and not w.egress and w.repl.peer_committed == w.repl.decided)

    def run(self, max_steps: int = 4000) -> Sim:
        for self.step_no in range(max_steps):
            current = None
            try:
                if self.arms and self.arms[0].point == "random" and self.step_no >= self.arms[0].n and self._armed():
                    current = self.p_ep if self.arms[0].role == "P" else self.s_ep
                    raise Crashed("random")
                self._switch()
                for ep in list(self.endpoints):
                    current = ep
                    self._deliver(ep)
                current = self.p_ep
                if self.p_ep.alive:
                    self._process(self.p_ep)
                    self._egress(self.p_ep)
                for ep in list(self.endpoints):
                    current = ep
                    if ep.alive and self.rng.random() < 0.5:
                        core = ep.prim.repl if ep.prim is not None else ep.sec
                        if core is not None:
                            self._run(ep, core.tick())
                        if ep.prim is not None and self.rng.random() < 0.3:   # the driver's quiet-spell Commit
                            self._run(ep, ep.prim.repl.commit())
                current = self.p_ep   # the controller's sync runs the primary's actions
                self._controller()
            except Crashed as crash:
                self._crash(current, str(crash))
            except Abort as abort:
                self.errors.append(str(abort))
                return self
            if self._done():
                self.finished = True
                break
        else:
            self.errors.append(f"no progress after {max_steps} steps (liveness)")
        self.errors += check(self)
        return self

    def repro(self) -> str:
        return (f"seed={self.seed} arms={self.arms_desc} crashed={self.crashed_at} "
                f"replay_decided={self.replay_decided}: {self.errors[:3]}")
