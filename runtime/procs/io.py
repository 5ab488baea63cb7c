"""The node's I/O process: ingress, stamping, the switch and the egress, in one loop.

One process per node (and a hot standby) where there were four: ingress,
stamping units, fabric and egress. A packet crosses two process boundaries
fewer on its way through a node, and one wake-up of this process serves all
of its jobs. Each round:

1. ingress (nodes with ``[ingress] listen``): a burst from the source (VXLAN
   datagrams, a local shm ring, a pcap file) is parsed as one numpy batch and
   pushed into the stamping units' input rings. The rings are shared memory
   that outlives this process, so a successor stamps again exactly what a dead
   one was stamping (``stamper.py``'s journal); a full ring drops there, before
   stamping (``unit_ring_full``);
2. each stamping unit stamps what fits at every destination and hands it on
   (``unit.py``): local instances' rings, other nodes' workers over ZeroMQ;
3. every local instance that got packets is rung once (a FIFO write);
4. egress: every worker's egress ring is drained and sent (VXLAN over UDP, or
   a local shm ring); the ring's head moves past a burst once it is sent, so
   the workers learn what has left the node (2PC commits wait for it).

Then it sleeps in one ``select`` on the ingress socket (or the shm input's
bell) and the egress bell until either has work, or until a timer is due: a
unit blocked by a full destination looks again after a millisecond, idle
flows are forgotten once a second.

A burst is whatever is there when the round starts (NAPI's rule: work until
drained, then sleep), so batches grow with the load. ``[ingress] coalesce_us``
goes further, like a NIC's interrupt moderation: after a read that found
datagrams, the socket is not read again for that long, so under load a burst
(and every message and wake-up it causes downstream) carries more packets; a
packet that arrives after a quiet spell is read at once.
"""

from __future__ import annotations

import select
import time

import numpy as np
import zmq

from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.dataplane.parse import DROP_REASONS
from deft.runtime.dataplane.stamper import unit_of
from deft.runtime.procs.egress import BURST as EGRESS_BURST
from deft.runtime.procs.egress import LatencyWindow, open_sink
from deft.runtime.procs.ingress import BURST, open_source
from deft.runtime.procs.unit import IoShared, StampingUnit
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.roundcost import round_costs
from deft.runtime.sockets import close_context
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

COUNTERS = (["ready", "owner", "rounds", "sleeps",
             # ingress
             "received", "accepted", "dropped", "unit_ring_full", "bursts",
             # egress
             "sent", "send_errors", "icmp_refused", "egress_bursts", "node_latency_p50_us", "node_latency_p99_us"]
            + [f"drop_{r}" for r in DROP_REASONS])
BLOCKED_RETRY_MS = 1      # a unit whose destinations were full looks again this soon
EXPIRY_NS = 1_000_000_000


class Ingress:
    """The source side: read a burst, parse it, push it into the units' input rings."""

    def __init__(self, topo: Topology, stats: CounterBlock, socket_fd: int | None):
        self.source = open_source(topo, socket_fd)
        self.rings = [Ring.attach(topo.unit_ring(u), PACKET_DTYPE) for u in topo.units]
        self.out = np.zeros(BURST, dtype=PACKET_DTYPE)
        self.drops = np.zeros(len(DROP_REASONS), dtype=np.int64)
        self.v = stats.values
        self.i_received, self.i_accepted, self.i_dropped, self.i_full, self.i_bursts = (
            stats.index[c] for c in ("received", "accepted", "dropped", "unit_ring_full", "bursts"))
        self.i_drop0 = stats.index[f"drop_{DROP_REASONS[0]}"]

    def fileno(self) -> int | None:
        return self.source.fileno()

    @property
    def exhausted(self) -> bool:
        """Nothing more will come without a wake-up (a pcap replay that is over, or any other source)."""
        return getattr(self.source, "exhausted", True)

    def read(self) -> int:
        """One burst into the units' rings; the number of datagrams read."""
        v, out = self.v, self.out
        if self.source.backpressure:  # shm, pcap: records can wait where they are
            room = min(r.free() for r in self.rings)
            if room == 0:
                return 0
            n, k = self.source.read(out[:room], self.drops)
        else:
            n, k = self.source.read(out, self.drops)
        if n == 0:
            return 0
        v[self.i_received] += n
        v[self.i_accepted] += k
        v[self.i_bursts] += 1
        if n != k:
            v[self.i_dropped] += n - k
            v[self.i_drop0: self.i_drop0 + len(self.drops)] += self.drops
            self.drops[:] = 0
        if k:
            batch = out[:k]
            if len(self.rings) == 1:
                v[self.i_full] += k - self.rings[0].push_some(batch)
            else:
                which = unit_of(batch["key_hash"], len(self.rings))
                for u, ring in enumerate(self.rings):
                    part = np.flatnonzero(which == u)
                    if len(part):
                        v[self.i_full] += len(part) - ring.push_some(batch, part)
        return n

    def close(self) -> None:
        self.source.close()
        for r in self.rings:
            r.close()


class Egress:
    """The sending side: every worker's egress ring, drained and sent."""

    def __init__(self, topo: Topology, stats: CounterBlock):
        # a udp:// egress: the workers send their own output (Worker.send_egress); nothing to drain here
        self.rings = ([] if topo.config.egress.sent_by_workers
                      else [Ring.attach(topo.egress_ring(i), PACKET_DTYPE) for i in topo.instances])
        self.sink = open_sink(topo)
        self.stats = stats
        self.latency = LatencyWindow()
        self.v = stats.values
        self.i_sent, self.i_err, self.i_refused, self.i_bursts = (
            stats.index[c] for c in ("sent", "send_errors", "icmp_refused", "egress_bursts"))

    def send(self) -> int:
        """Send what every egress ring holds (a burst each); the number of packets sent."""
        moved = 0
        v = self.v
        for ring in self.rings:
            view = ring.peek(EGRESS_BURST)
            if len(view):
                self.latency.add(view["ts_ns"], time.monotonic_ns())
                # the sink releases each datagram from the ring once sent: the workers' commits wait
                # for the head to pass their batches, and a crash here repeats at most one datagram
                sent, errors, refused = self.sink.send(view, ring)
                v[self.i_sent] += sent
                v[self.i_err] += errors
                v[self.i_refused] += refused
                v[self.i_bursts] += 1
                moved += len(view)
        return moved

    def pending(self) -> bool:
        """Output left after a round (a ring held more than a burst): its bell will not ring again."""
        return any(len(r) for r in self.rings)

    def close(self) -> None:
        self.sink.close()
        for r in self.rings:
            r.close()


class IoProcess:
    def __init__(self, topo: Topology, log, socket_fd: int | None):
        self.topo = topo
        self.log = log
        self.stats = CounterBlock.attach(topo.stats("io"))
        self.zctx = zmq.Context()
        self.shared = IoShared(topo, self.zctx)
        self.units = [StampingUnit(topo, u, self.shared) for u in topo.units]
        self.ingress = Ingress(topo, self.stats, socket_fd) if topo.has_ingress else None
        self.egress = Egress(topo, self.stats)
        self.egress_bell = FdBell.attach(topo.egress_bell())
        self.ingress_fd = self.ingress.fileno() if self.ingress is not None else None
        self.coalesce_ns = topo.config.ingress.coalesce_us * 1000
        self.costs = round_costs(f"{topo.node_id}.io")
        self.next_read_ns = 0   # coalescing: the socket is not read before this
        self.next_expiry = time.monotonic_ns() + EXPIRY_NS
        self.v = self.stats.values
        self.i_rounds, self.i_sleeps = self.stats.index["rounds"], self.stats.index["sleeps"]

    def resend_logged(self) -> int:
        self.shared.refresh()
        return sum(unit.resend_logged() for unit in self.units)

    def round(self, read: bool = True) -> tuple[int, bool, int]:
        """One round of every job; (packets moved, a unit was blocked by a full destination,
        datagrams read). ``read`` False: leave the ingress for a later round (coalescing)."""
        costs = self.costs   # what each phase costs (DEFT_ROUND_COSTS; else no-ops)
        costs.begin()
        got = self.ingress.read() if self.ingress is not None and read else 0
        costs.woke("datagrams" if got else "nothing", "read")
        moved = got
        self.shared.refresh()   # a new routes epoch takes effect between batches, never inside one
        costs.mark("routes")
        blocked = False
        for unit in self.units:
            while True:
                consumed = unit.step()
                moved += consumed
                if consumed == 0:
                    blocked |= len(unit.in_ring) > 0
                    break
                if len(unit.in_ring) == 0:
                    break
        costs.mark("units")
        self.shared.ring_bells()
        costs.mark("bells")
        self.egress_bell.drain()   # before looking at the rings: a ring that comes later wakes us
        moved += self.egress.send()
        costs.mark("egress")
        self.v[self.i_rounds] += 1
        return moved, blocked, got

    def sleep(self, timeout_s: float, now: int) -> None:
        """Until the egress bell rings, the ingress has datagrams (if it may be read now), or timeout."""
        fds = [self.egress_bell.fileno()]
        if self.ingress_fd is not None:
            if now >= self.next_read_ns:
                fds.append(self.ingress_fd)
            else:   # coalescing: wake for it when the window ends
                timeout_s = min(timeout_s, (self.next_read_ns - now) / 1e9)
        self.v[self.i_sleeps] += 1
        try:
            select.select(fds, [], [], timeout_s)
        except InterruptedError:
            pass

    def run(self, stop) -> None:
        if hasattr(stop, "on_stop"):   # a SIGTERM ends the sleep at once (procs/common.py)
            stop.on_stop(self.egress_bell.ring)
        timeout_s = 0.0
        while not stop:
            now = time.monotonic_ns()
            if timeout_s:
                self.sleep(timeout_s, now)
                now = time.monotonic_ns()
            moved, blocked, got = self.round(read=now >= self.next_read_ns)
            if got and self.coalesce_ns:
                self.next_read_ns = now + self.coalesce_ns
            if now >= self.next_expiry:
                self.next_expiry = now + EXPIRY_NS
                for unit in self.units:
                    unit.expire(now)
                self.shared.decay_bucket_load()
            self.egress.latency.publish(self.stats, now)   # at most every 100 ms
            # After a round that moved packets, the select itself says whether more came (it returns at
            # once if so): a whole empty round to find out costs more than the syscall
            if blocked:
                timeout_s = BLOCKED_RETRY_MS / 1000
            elif self.egress.pending() or (self.ingress is not None and not self.ingress.exhausted):
                timeout_s = 0.0
            else:
                timeout_s = max(0.001, (self.next_expiry - now) / 1e9)

    def close(self) -> None:
        self.costs.dump()
        for unit in self.units:
            unit.close()
        if self.ingress is not None:
            self.ingress.close()
        self.egress.close()
        self.shared.close()
        self.egress_bell.close()
        close_context(self.zctx)
        self.stats.close()


def run(topo: Topology, index: int, stop, log, restarted: bool = False, socket_fd: int | None = None) -> None:
    io = IoProcess(topo, log, socket_fd)
    resent = io.resend_logged()
    log.info("io up: ingress %s, %d stamping unit(s) (%s), egress %s; %d remote sends repeated",
             topo.config.ingress.listen, len(io.units), ", ".join(str(u.recovered) for u in io.units) or "-",
             topo.config.egress.send_to, resent)
    io.stats.set("ready", 1)
    try:
        io.run(stop)
    finally:
        io.stats.set("ready", 0)
        io.close()
