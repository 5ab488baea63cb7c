"""The controller lease (runtime/controller/lease.py): never two active controllers, terms that fence.

A seeded simulation: controllers and witness nodes exchange lease requests
with random delays, losses and very late deliveries; controllers pause and
crash (a restarted one is a new holder); clocks run at slightly different
rates. At every step at most one controller believes it is active, a new
active one has a higher term than every earlier one, a node obeys pushes in
term order only, and after the active one dies another takes over in time.
"""

from __future__ import annotations

import heapq
import random
import time

import pytest
import zmq

from deft.runtime.controller.lease import LEASE_MARGIN, LeaseCandidate, LeaseVoter
from deft.runtime.controller.leaselink import LeaseKeeper

LEASE_MS = 400.0


class Controller:
    def __init__(self, name: str, voters: list[str], incarnation: int = 0, rate: float = 1.0):
        self.name = name
        self.holder = f"{name}#{incarnation}"
        self.candidate = LeaseCandidate(self.holder, voters, LEASE_MS, control=name)
        self.voter = LeaseVoter()
        self.rate = rate          # its clock runs this fast against true time
        self.paused_until = 0.0
        self.dead = False

    def local(self, t: float) -> float:
        return t * self.rate


class Sim:
    def __init__(self, seed: int, n_controllers: int = 2, n_witnesses: int = 3, loss: float = 0.05):
        self.rng = random.Random(seed)
        self.loss = loss
        self.t = 0.0
        self.queue: list = []
        self.n = 0
        names = [f"c{i}" for i in range(n_controllers)]
        self.witnesses = [f"n{i}" for i in range(n_witnesses)]
        self.voters = names + self.witnesses
        self.controllers = {c: Controller(c, self.voters, rate=self.rng.uniform(0.98, 1.02)) for c in names}
        self.nodes = {n: LeaseVoter() for n in self.witnesses}
        self.node_rate = {n: self.rng.uniform(0.98, 1.02) for n in self.witnesses}
        self.admitted: dict[str, list[tuple[int, str]]] = {n: [] for n in self.witnesses}
        self.active_terms: list[tuple[int, str]] = []   # (term, holder) at each new activation
        self.was_active: dict[str, bool] = {}
        for c in names:
            self.at(self.rng.uniform(0, 50), ("tick", c))
        for n in self.witnesses:
            self.at(self.rng.uniform(0, 100), ("beat", n))

    def at(self, t: float, event: tuple) -> None:
        self.n += 1
        heapq.heappush(self.queue, (t, self.n, event))

    def send(self, event: tuple) -> None:
        if self.rng.random() < self.loss:
            return
        delay = self.rng.uniform(0.1, 20.0) if self.rng.random() > 0.03 else self.rng.uniform(100, 2 * LEASE_MS)
        self.at(self.t + delay, event)

    def voter_request(self, voter: str, req: dict) -> dict | None:
        if voter in self.nodes:
            now = self.t * self.node_rate[voter]
            return self.nodes[voter].request(req["holder"], req["term"], req["lease_ms"], req["control"], now)
        c = self.controllers[voter]
        if c.dead or self.t < c.paused_until:
            return None
        return c.voter.request(req["holder"], req["term"], req["lease_ms"], req["control"], c.local(self.t))

    def step(self) -> None:
        self.t, _, event = heapq.heappop(self.queue)
        kind, who = event[0], event[1]
        if kind == "tick":
            c = self.controllers[who]
            if c.dead:
                return
            if self.t >= c.paused_until:
                req = c.candidate.request(c.local(self.t))
                for v in self.voters:
                    if v == who:
                        reply = c.voter.request(req["holder"], req["term"], req["lease_ms"], req["control"],
                                                c.local(self.t))
                        c.candidate.on_reply(v, {**reply, "seq": req["seq"]}, c.local(self.t))
                    else:
                        self.send(("request", v, who, c.holder, req))
                if c.candidate.active(c.local(self.t)):   # an active controller pushes routes
                    for n in self.witnesses:
                        self.send(("push", n, c.candidate.term, c.holder))
            self.at(self.t + LEASE_MS / 4 * self.rng.uniform(0.8, 1.2), ("tick", who))
        elif kind == "request":
            _, voter, sender, holder, req = event
            reply = self.voter_request(voter, req)
            if reply is not None:
                self.send(("reply", sender, voter, holder, {**reply, "seq": req["seq"]}))
        elif kind == "reply":
            _, who, voter, holder, reply = event
            c = self.controllers[who]
            if not c.dead and c.holder == holder:   # a reply to an earlier incarnation is nobody's
                c.candidate.on_reply(voter, reply, c.local(self.t))
        elif kind == "push":
            _, node, term, holder = event
            if self.nodes[node].admits(term, holder):
                self.admitted[node].append((term, holder))
            else:   # the refusal names the controller this node follows
                self.send(("fence", holder.split("#")[0], *self.nodes[node].fence))
        elif kind == "beat":   # every node's beat reports the controller it follows
            for c in self.controllers:
                self.send(("fence", c, *self.nodes[who].fence))
            self.at(self.t + 100, ("beat", who))
        elif kind == "fence":
            _, who, term, holder = event
            c = self.controllers[who]
            if not c.dead and self.t >= c.paused_until:
                c.candidate.deposed_by(term, holder)
        self.check()

    def check(self) -> None:
        active = [c for c in self.controllers.values()
                  if not c.dead and c.candidate.active(c.local(self.t))]
        assert len(active) <= 1, f"t={self.t:.1f}: two active controllers {[c.holder for c in active]}"
        for c in self.controllers.values():
            now_active = c in active
            if now_active and not self.was_active.get(c.holder):
                entry = (c.candidate.term, c.holder)
                assert all(term < entry[0] for term, h in self.active_terms if h != c.holder), \
                    f"t={self.t:.1f}: {c.holder} active at term {entry[0]} after {self.active_terms}"
                self.active_terms.append(entry)
            self.was_active[c.holder] = now_active

    def run_until(self, t: float) -> None:
        while self.queue and self.queue[0][0] <= t:
            self.step()

    def active(self) -> list[Controller]:
        return [c for c in self.controllers.values() if not c.dead and c.candidate.active(c.local(self.t))]


@pytest.mark.parametrize("seed", range(40))
def test_never_two_active_controllers_and_terms_fence(seed):
    sim = Sim(seed)
    rng = random.Random(seed + 1000)
    for _ in range(12):
        sim.run_until(sim.t + rng.uniform(200, 1500))
        victim = rng.choice(list(sim.controllers.values()))
        action = rng.random()
        if action < 0.4:     # a pause longer than the lease: it must have stepped down when it wakes
            victim.paused_until = sim.t + rng.uniform(100, 3 * LEASE_MS)
        elif action < 0.7:   # a crash and a restart: a new holder, knowing nothing
            victim.dead = True
            incarnation = int(victim.holder.split("#")[1]) + 1
            restarted = Controller(victim.name, sim.voters, incarnation, rate=victim.rate)
            sim.controllers[victim.name] = restarted
            sim.at(sim.t + rng.uniform(50, 500), ("tick", victim.name))
    sim.run_until(sim.t + 3000)
    for node, pushes in sim.admitted.items():
        terms = [t for t, _ in pushes]
        assert terms == sorted(terms), f"{node} obeyed terms out of order"
        holders: dict[int, set[str]] = {}
        for term, holder in pushes:
            holders.setdefault(term, set()).add(holder)
        assert all(len(h) == 1 for h in holders.values()), f"{node}: one term from two controllers {holders}"
    assert len(sim.active_terms) >= 1


@pytest.mark.parametrize("seed", range(20))
def test_standby_takes_over_within_about_a_lease(seed):
    """No loss, no pauses: the active one dies; the other is active within lease + two request periods."""
    sim = Sim(seed, loss=0.0)
    sim.rng = random.Random(seed)
    sim.run_until(2000)
    (first,) = sim.active()
    first.dead = True
    died = sim.t
    while not sim.active():
        assert sim.t < died + 20 * LEASE_MS, "nobody took over"   # a liveness bug fails, never hangs
        sim.step()
    took = sim.t - died
    assert took <= LEASE_MS * (1 + 2 * LEASE_MARGIN) + 2 * LEASE_MS / 4 * 1.2 + 2 * 2 * LEASE_MS, took
    assert sim.active()[0].candidate.term > first.candidate.term


def test_voter_grants_one_holder_per_term():
    v = LeaseVoter()
    assert v.request("a", 1, 100, "ca", 0)["granted"]
    assert not v.request("b", 2, 100, "cb", 50)["granted"]          # a's lease holds
    assert v.request("a", 1, 100, "ca", 90)["granted"]              # a renews
    assert not v.request("b", 1, 100, "cb", 500)["granted"]         # lapsed, but not a higher term
    reply = v.request("b", 2, 100, "cb", 500)
    assert reply["granted"] and reply["holder"] == "b" and reply["control"] == "cb"
    assert v.admits(2, "b") and v.admits(3, "c") and not v.admits(2, "b")   # c was chosen since
    assert not v.request("b", 2, 100, "cb", 510)["granted"]         # c's term 3 is known here
    assert v.request("b", 4, 100, "cb", 700)["granted"]


def test_lone_controller_is_active_above_the_terms_nodes_report():
    c, me = LeaseCandidate("solo#2", ["self"], 400), LeaseVoter()

    def ask(now):
        req = c.request(now)
        c.on_reply("self", {**me.request(req["holder"], req["term"], 400, "", now), "seq": req["seq"]}, now)

    ask(0)
    assert c.active(1) and c.term == 1
    c.deposed_by(7, "solo#1")            # a node's beat: an older incarnation pushed at term 7
    assert not c.active(2)
    ask(3)
    assert c.active(4) and c.term == 8
    c.deposed_by(8, "solo#2")            # its own term, reported back: nothing changes
    assert c.active(5)
    assert c.active(10_000)           # not renewed, and still active: no one else can hold it


def test_a_lone_controllers_lease_thread_sleeps_between_renewals():
    """No remote voter, no socket to poll: zmq's poll with none returns at once, and the thread spun
    a core in every single-controller cluster until it slept on its own."""
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return time.monotonic() * 1000

    ctx = zmq.Context()
    keeper = LeaseKeeper(ctx, "c#0", "tcp://127.0.0.1:1", [], [], 400, 0.0, clock)
    try:
        time.sleep(0.5)
        assert keeper.active()
    finally:
        keeper.close()
        ctx.term()
    assert calls < 100, f"{calls} clock reads in 0.5 s: the thread spins"   # a renewal every 100 ms
