"""What a round of a worker or an io costs, by what woke it and by phase: CPU of its main thread
(diagnostics).

``DEFT_ROUND_COSTS=DIR`` in a process's environment (its supervisor's is inherited) makes every
worker and io time each phase of each round with ``time.thread_time_ns`` (CPU, not wall time: a
round that waits for a core costs nothing here) and write ``DIR/<node>.<role>.<pid>.json`` when it
stops: rounds and nanoseconds per (what woke it, phase). ``benchmarks/profile_cluster.py
--round-costs`` runs ``examples/cluster`` with it and prints a table per role. Without the variable
a process gets ``NO_COSTS``, whose calls do nothing (a few tens of nanoseconds a round).

A worker's round is named by the first reason of ``Worker.count_wake`` (bell, packets, replica,
copies, votes, global, timer), or ``busy`` for a round that did not sleep; its phases are its loop's
(``Worker.run``): wait (the wait set, before and after the sleep), routes, copies, messages, input,
release, timers, plan (the next sleep). An io's round is ``datagrams`` or ``nothing`` (what its read
found); its phases: read, routes, units (stamping, switch, hand-on to rings and sockets), bells,
egress (``IoProcess.round``).
"""

from __future__ import annotations

import collections
import os
import time

import orjson

ENV = "DEFT_ROUND_COSTS"


class RoundCosts:
    def __init__(self, path: str):
        self.path = path
        self.clock = time.thread_time_ns
        self.t = 0
        self.kind = "busy"
        self.ns: collections.Counter = collections.Counter()
        self.rounds: collections.Counter = collections.Counter()

    def begin(self) -> None:
        self.t = self.clock()

    def woke(self, kind: str, phase: str = "wait") -> None:
        """The round's cause, known once ``phase`` (the wait, the io's read) ended; that phase's CPU is
        the first charged to it."""
        self.kind = kind
        self.rounds[kind] += 1
        self.mark(phase)

    def mark(self, phase: str) -> None:
        t = self.clock()
        self.ns[f"{self.kind}.{phase}"] += t - self.t
        self.t = t

    def dump(self) -> None:
        with open(self.path, "wb") as f:
            f.write(orjson.dumps({"rounds": dict(self.rounds), "ns": dict(self.ns)}))


class _NoCosts:
    def begin(self) -> None:
        pass

    def woke(self, kind: str, phase: str = "wait") -> None:
        pass

    def mark(self, phase: str) -> None:
        pass

    def dump(self) -> None:
        pass


NO_COSTS = _NoCosts()


def round_costs(name: str) -> RoundCosts | _NoCosts:
    """A recorder writing ``$DEFT_ROUND_COSTS/<name>.<pid>.json``, or ``NO_COSTS`` when unset."""
    folder = os.environ.get(ENV)
    if not folder:
        return NO_COSTS
    return RoundCosts(os.path.join(folder, f"{name}.{os.getpid()}.json"))


def table(files: list[str]) -> list[str]:
    """Lines of the summed recordings (of one role): per cause, rounds and CPU per round by phase
    (microseconds), the phases in the order they were recorded."""
    rounds: collections.Counter = collections.Counter()
    ns: collections.Counter = collections.Counter()
    phases: dict[str, None] = {}
    for path in files:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
        rounds.update(data["rounds"])
        ns.update(data["ns"])
        phases.update(dict.fromkeys(key.split(".", 1)[1] for key in data["ns"]))
    total = sum(ns.values()) or 1
    lines = [f"{'woken by':9s} {'rounds':>7s} {'us/round':>8s} {'share':>6s}  " + " ".join(f"{p:>8s}" for p in phases)]
    for kind, n in rounds.most_common():
        per = [ns[f"{kind}.{p}"] / n / 1000 for p in phases]
        share = sum(ns[f"{kind}.{p}"] for p in phases) / total
        lines.append(f"{kind:9s} {n:7d} {sum(per):8.0f} {100 * share:5.1f}%  " + " ".join(f"{x:8.0f}" for x in per))
    return lines
