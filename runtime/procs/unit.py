"""Stamping unit: stamp (flow_id, seq), then switch each packet to its NF instance's ring.

The switch step reads the flow rules (bucket -> instance) from shared memory
that the supervisor owns. Room in the instance rings is checked *before*
stamping: only the prefix of the batch that fits is stamped and handed on, the
rest stays in the unit's input ring (counted as ``blocked``), so no stamped
packet is ever dropped here and an instance never waits for a seq that will
not come. When the unit falls behind, its input ring fills and the ingress
drops (counted there as ``unit_ring_full``), before stamping.

Back-pressure never blocks forever: an instance whose ring has not had room
for STALL_S (a stopped or wedged worker) gets its packets dropped *unstamped*
(``dropped_stalled``) until it drains again, so one stuck instance cannot stop
the node, and still no flow sees a hole in its seqs.
"""

from __future__ import annotations

import time

import numpy as np

from deft.runtime.dataplane.flowrules import FlowRules
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.dataplane.stamper import Stamper, bucket_of
from deft.runtime.ring import Doorbell, Ring
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

MAX_BATCH = 256
COUNTERS = ["ready", "received", "stamped", "blocked", "dropped_stalled", "new_flows", "flows", "expired"]
STALL_S = 1.0  # an instance whose ring stays full this long is treated as stuck


def fitting_prefix(instance: np.ndarray, rooms: list[int]) -> int:
    """Length of the longest prefix of the batch whose packets all fit in their instance's ring.

    Taking a prefix (not a subset) keeps each flow's packets in arrival order,
    and leaving the rest in the unit's own ring pushes back on the ingress
    instead of dropping packets that were already stamped.
    """
    take = len(instance)
    for i, room in enumerate(rooms):
        if room < take:
            pos = np.flatnonzero(instance[:take] == i)
            if len(pos) > room:
                take = int(pos[room])
    return take


def plan_handoff(instance: np.ndarray, rooms: list[int], stuck: set[int]) -> tuple[np.ndarray, int]:
    """(indices of the packets to stamp and hand on, packets consumed from the unit's ring).

    Without stuck instances: the fitting prefix. With some: their packets are
    skipped (consumed unstamped, i.e. dropped) and the others taken as far as
    they fit, in order.
    """
    if not stuck:
        take = fitting_prefix(instance, rooms)
        return np.arange(take), take
    live = np.flatnonzero(~np.isin(instance, list(stuck)))
    take = fitting_prefix(instance[live], rooms)
    consumed = len(instance) if take == len(live) else int(live[take])
    return live[:take], consumed


class StallWatch:
    """Which instances have had a full ring for STALL_S or longer (time passed in)."""

    def __init__(self, stall_s: float = STALL_S):
        self.stall_s = stall_s
        self.full_since: dict[int, float] = {}

    def stuck(self, rooms: list[int], now: float) -> set[int]:
        for i, room in enumerate(rooms):
            if room == 0:
                self.full_since.setdefault(i, now)
            else:
                self.full_since.pop(i, None)
        return {i for i, t in self.full_since.items() if now - t >= self.stall_s}


def run(topo: Topology, index: int, stop, log, restarted: bool = False) -> None:
    cfg = topo.config
    n_inst = cfg.nf.instances
    in_ring = Ring.attach(topo.unit_ring(index), PACKET_DTYPE)
    my_bell = Doorbell.attach(topo.unit_bell(index))
    out_rings = [Ring.attach(topo.nf_ring(i, index), PACKET_DTYPE) for i in topo.instances]
    out_bells = [Doorbell.attach(topo.nf_bell(i)) for i in topo.instances]
    flow_rules = FlowRules.attach(topo.rules())
    rules = flow_rules.instance_of
    stats = CounterBlock.attach(topo.stats(f"unit{index}"))
    v = stats.values
    i_received, i_stamped, i_blocked, i_stalled = (
        stats.index[c] for c in ("received", "stamped", "blocked", "dropped_stalled"))
    stamper = Stamper(index)
    watch = StallWatch()
    idle_ns = int(cfg.ingress.flow_idle_s * 1e9)
    next_expiry = time.monotonic() + 1.0
    log.info("stamping unit %d up (%d NF instance(s))", index, n_inst)
    stats.set("ready", 1)
    try:
        while not stop:
            view = in_ring.peek(MAX_BATCH)
            n = len(view)
            if n == 0:
                my_bell.wait(0.1)
                if time.monotonic() > next_expiry:
                    stats.add("expired", stamper.expire(time.monotonic_ns(), idle_ns))
                    stats.set("flows", len(stamper))
                    stats.set("new_flows", stamper.new_flows)
                    next_expiry = time.monotonic() + 1.0
                continue
            instance = rules[bucket_of(view["key_hash"], len(rules))]
            rooms = [r.free() for r in out_rings]
            if fitting_prefix(instance, rooms) == n:  # the common case: everything fits
                batch, consumed = view, n
            else:
                picked, consumed = plan_handoff(instance, rooms, watch.stuck(rooms, time.monotonic()))
                if consumed == 0:
                    v[i_blocked] += 1
                    time.sleep(0.0001)  # an NF instance is behind: let it run
                    continue
                v[i_stalled] += consumed - len(picked)
                batch = view[:consumed] if len(picked) == consumed else view[picked]
                instance = instance[:consumed] if len(picked) == consumed else instance[picked]
            stamper.stamp(batch)
            if n_inst == 1:
                out_rings[0].push_some(batch)
                out_bells[0].ring()
            else:
                for i in range(n_inst):
                    part = np.flatnonzero(instance == i)
                    if len(part):
                        out_rings[i].push_some(batch, part)
                        out_bells[i].ring()
            in_ring.release(consumed)
            v[i_received] += consumed
            v[i_stamped] += len(batch)
    finally:
        stats.set("flows", len(stamper))
        stats.set("new_flows", stamper.new_flows)
        stats.set("ready", 0)
        in_ring.close()
        for r in out_rings:
            r.close()
        flow_rules.close()
        stats.close()
