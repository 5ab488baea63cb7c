"""Fabric: receives packet batches that stamping units on other nodes route to this node's instances.

A ZMQ PULL socket bound at ``[node] fabric``; every PACKETS message goes into
the target worker's ``nf<i>.fabric`` ring. A full ring is waited on (not
dropped: the records are stamped), so a slow worker pushes back through ZMQ's
high-water mark to the sending unit. Malformed messages are counted as
``bad_frames`` and ignored.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.errors import WireError
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.sockets import make_socket
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

COUNTERS = ["ready", "batches", "packets", "bad_frames", "ring_waits"]
MAX_BATCH = 4096


def run(topo: Topology, index: int, stop, log, restarted: bool = False) -> None:
    rings = [Ring.attach(topo.fabric_ring(i), PACKET_DTYPE) for i in topo.instances]
    dup_rings = ([Ring.attach(topo.fabric_dup_ring(i), PACKET_DTYPE) for i in topo.instances]
                 if topo.config.nf.replicate else None)
    bells = [FdBell.attach(topo.nf_bell(i)) for i in topo.instances]
    stats = CounterBlock.attach(topo.stats("fabric"))
    ctx = zmq.Context()
    sock = make_socket(ctx, zmq.PULL, bind=topo.config.node.fabric, hwm=64)
    out = np.zeros(MAX_BATCH, dtype=PACKET_DTYPE)
    log.info("fabric listening on %s", topo.config.node.fabric)
    stats.set("ready", 1)
    try:
        while not stop:
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart(copy=True)
            try:
                header, n = wire.decode_packets(frames, len(rings), out)
            except WireError as exc:
                stats.add("bad_frames", 1)
                if stats.get("bad_frames") <= 10:
                    log.warning("ignored a bad fabric message: %s", exc)
                continue
            i = header["instance"]
            target = rings[i]
            if out[0]["dup"]:  # a unit sends copies for secondaries in messages of their own
                if dup_rings is None:
                    stats.add("bad_frames", 1)
                    continue
                target = dup_rings[i]
            done = 0
            while done < n and not stop:
                done += target.push_some(out[done:n])
                bells[i].ring()
                if done < n:
                    stats.add("ring_waits", 1)
                    time.sleep(0.0002)
            stats.add("batches", 1)
            stats.add("packets", n)
    finally:
        stats.set("ready", 0)
        sock.close()
        ctx.term()
        for r in rings + (dup_rings or []):
            r.close()
        stats.close()
