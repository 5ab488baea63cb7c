"""Load per instance and per pair, from the cumulative counters heartbeats carry.

Every beat says, per worker: the CPU time its loop spent working (``busy_ns``, cumulative), the
packets waiting in its input ring (``in_ring``) and the packets it processed as the primary of
each pair (``pairs``, cumulative, per pair). ``LoadMeter`` turns them into rates over windows of at
least ``WINDOW_MS``: the fraction of the time the worker was busy, and packets per second per
pair. A pair's busy fraction is its primary's, in proportion to the pair's share of the packets
that worker processed. Pure: counters and times (ms) in. A counter that went backwards (the worker
restarted) starts a new window.
"""

from __future__ import annotations

import dataclasses

WINDOW_MS = 500.0


@dataclasses.dataclass
class Sample:
    t_ms: float
    busy_ns: int
    pairs: dict[int, int]


@dataclasses.dataclass
class InstanceLoad:
    busy: float = 0.0                  # fraction of the last window the worker was working
    pps: dict[int, float] = dataclasses.field(default_factory=dict)   # per pair it processed as primary
    in_ring: int = 0
    start: Sample | None = None

    def observe(self, t_ms: float, busy_ns: int, pairs: dict[int, int], in_ring: int) -> None:
        self.in_ring = in_ring
        s = self.start
        if s is None or busy_ns < s.busy_ns or any(pairs.get(p, 0) < n for p, n in s.pairs.items()):
            self.start = Sample(t_ms, busy_ns, dict(pairs))
            return
        dt = t_ms - s.t_ms
        if dt < WINDOW_MS:
            return
        self.busy = min(1.0, (busy_ns - s.busy_ns) / (dt * 1e6))
        self.pps = {p: (n - s.pairs.get(p, 0)) * 1000.0 / dt for p, n in pairs.items()}
        self.start = Sample(t_ms, busy_ns, dict(pairs))


class LoadMeter:
    def __init__(self) -> None:
        self.instances: dict[str, InstanceLoad] = {}

    def observe(self, instance: str, t_ms: float, beat: dict) -> None:
        """One instance's entry of a heartbeat (``busy_ns``, ``pairs``, ``in_ring``; absent: no load)."""
        if "busy_ns" not in beat:
            return
        load = self.instances.setdefault(instance, InstanceLoad())
        load.observe(t_ms, beat["busy_ns"], {int(p): n for p, n in beat.get("pairs", {}).items()},
                     beat.get("in_ring", 0))

    def forget(self, instance: str) -> None:
        self.instances.pop(instance, None)

    def pair_pps(self, pair: int) -> float:
        return sum(load.pps.get(pair, 0.0) for load in self.instances.values())

    def pair_load(self, pair: int, primary: str | None) -> dict:
        """Status of one pair: packets per second, its share of its primary's busy time, that
        primary's input ring."""
        pps = self.pair_pps(pair)
        load = self.instances.get(primary) if primary else None
        busy = 0.0
        if load is not None:
            total = sum(load.pps.values())
            busy = load.busy * (load.pps.get(pair, 0.0) / total if total > 0 else 0.0)
        return {"pps": round(pps, 1), "busy": round(busy, 3), "input_ring": load.in_ring if load else 0}

    def instance_load(self, instance: str) -> dict:
        load = self.instances.get(instance)
        if load is None:
            return {"busy": 0.0, "pps": 0.0, "input_ring": 0}
        return {"busy": round(load.busy, 3), "pps": round(sum(load.pps.values()), 1), "input_ring": load.in_ring}
