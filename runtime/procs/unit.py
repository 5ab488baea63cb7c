"""Stamping unit: stamp (flow_id, seq), then switch each packet to its NF instance's ring.

The switch step reads the flow rules (bucket -> instance) from shared memory
that the supervisor owns. Room in the instance rings is checked *before*
stamping: a packet that cannot be handed on is dropped unstamped (counted as
``nf_ring_full``), so the instance never waits for a seq that will not come.
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
COUNTERS = ["ready", "received", "stamped", "nf_ring_full", "new_flows", "flows", "expired"]


def admit(instance: np.ndarray, rooms: list[int]) -> np.ndarray:
    """Mask of packets that fit in their instance's ring (first come, first in)."""
    keep = np.ones(len(instance), dtype=bool)
    for i, room in enumerate(rooms):
        idx = np.flatnonzero(instance == i)
        if len(idx) > room:
            keep[idx[room:]] = False
    return keep


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
    stamper = Stamper(index)
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
                    next_expiry = time.monotonic() + 1.0
                continue
            instance = rules[bucket_of(view["key_hash"], len(rules))]
            rooms = [r.free() for r in out_rings]
            if sum(rooms) >= n and (n_inst == 1 or all(
                    np.count_nonzero(instance == i) <= rooms[i] for i in range(n_inst))):
                batch = view
            else:
                keep = admit(instance, rooms)
                batch = view[keep]
                instance = instance[keep]
                stats.add("nf_ring_full", n - len(batch))
            stamper.stamp(batch)
            if n_inst == 1:
                out_rings[0].push_some(batch)
                out_bells[0].ring()
            else:
                for i in range(n_inst):
                    part = batch[instance == i]
                    if len(part):
                        out_rings[i].push_some(part)
                        out_bells[i].ring()
            in_ring.release(n)
            stats.add("received", n)
            stats.add("stamped", len(batch))
            stats.set("new_flows", stamper.new_flows)
    finally:
        stats.set("ready", 0)
        in_ring.close()
        for r in out_rings:
            r.close()
        flow_rules.close()
        stats.close()
