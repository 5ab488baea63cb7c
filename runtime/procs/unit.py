"""Stamping unit: stamp (flow_id, seq), then switch each packet to its NF instance (in the io process).

The switch step reads the routes (bucket -> pair -> primary node and
instance) from shared memory that the supervisor owns; packets for an
instance on another node go straight to that worker over ZMQ (``Switch``).
Room at every destination is checked *before* stamping: only the prefix of
the batch that fits is stamped and handed on, the rest stays in the unit's
input ring (counted as ``blocked``), so no stamped packet is ever dropped here
and an instance never waits for a seq that will not come. When the unit falls
behind, its input ring fills and the ingress drops (counted there as
``unit_ring_full``), before stamping.

Back-pressure never blocks forever: an instance whose ring has not had room
for STALL_S (a stopped or wedged worker) gets its packets dropped *unstamped*
(``dropped_stalled``) until it drains again, so one stuck instance cannot stop
the node, and still no flow sees a hole in its seqs.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.sentlog import SentLog
from deft.runtime.dataplane.routes import NONE, TARGET_SCALE, RouteTables, Routes
from deft.runtime.dataplane.packet import FEW, PACKET_DTYPE
from deft.runtime.dataplane.stamper import Stamper, StamperTable, bucket_of
from deft.runtime.params import endpoint_of
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.ring.shm import attach_segment, release_segment
from deft.runtime.sockets import make_socket, send_frames, writable
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

MAX_BATCH = 256
FABRIC_SEND_TIMEOUT_MS = 50
COPY_WAKE_AT = 256   # copies waiting in a secondary's dup ring before its bell rings (see wake)

COUNTERS = ["ready", "owner", "received", "stamped", "duplicated", "sent_remote", "dropped_fabric", "resent", "blocked",
            "dropped_stalled", "table_full", "new_flows", "flows", "expired"]
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


def split_by_instance(instance: np.ndarray, n_inst: int) -> list[tuple[int, np.ndarray]]:
    """(instance, indices of its packets in arrival order) for every instance the batch has packets for."""
    if len(instance) <= FEW:  # a few packets: a Python pass, and no array for the instances without any
        parts: dict[int, list[int]] = {}
        for j, i in enumerate(instance.tolist()):
            parts.setdefault(i, []).append(j)
        return [(i, np.array(parts[i], dtype=np.int64)) for i in sorted(parts)]
    return [(i, part) for i in range(n_inst) if len(part := np.flatnonzero(instance == i))]


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


class Switch:
    """Where the switch can send a packet: this node's instances, then instances on other nodes.

    Destination d < n_local is local instance d (its input ring, or its dup ring for a copy);
    d >= n_local is an instance on another node, reached straight at its worker: originals
    on a PUSH to the worker's PULL (``[node] fabric`` base port + instance: back-pressured
    by ZeroMQ's high-water mark), copies for a secondary on a PUSH to the worker's copies
    PULL (``[node] copies`` base port + instance), which it drains every round without
    waking for it (a copy is needed when its Prepare comes, and that wakes the worker), or
    without ``[node] copies`` on a DEALER to its 2PC ROUTER (``[node] replication`` base port
    + instance), a wake-up each. Either way a secondary's copies never wait behind its own
    node's full input.
    Rebuilt whenever the routes' epoch changes; every stamping unit of the io uses it.
    """

    def __init__(self, routes: RouteTables, n_local: int, zctx: zmq.Context, old: "Switch | None" = None,
                 replicate: bool = False):
        """``routes``: a snapshot (``Routes.snapshot``), never the shared tables a writer may be changing."""
        self.epoch = routes.epoch
        self.n_local = n_local
        me = routes.self_node
        n_pairs = routes.n_pairs
        targets = routes.pairs[:n_pairs, :2].tolist()
        if replicate:  # the secondaries get a copy of every packet: they are destinations too
            targets += [t for t in routes.pairs[:n_pairs, 2:].tolist() if t[0] != NONE]
        remote = sorted({(int(node), int(inst)) for node, inst in targets if node != me})
        self.remote = remote
        known = [me * TARGET_SCALE + i for i in range(n_local)] + [n * TARGET_SCALE + i for n, i in remote]
        order = np.argsort(known)
        self._sorted = np.asarray(known, dtype=np.int64)[order]
        self._dest_of_sorted = order
        self.self_base = me * TARGET_SCALE
        self.all_local = not remote
        nodes = routes.nodes()
        reuse = dict(old.sockets) if old else {}
        self.sockets: dict[str, zmq.Socket] = {}
        self.originals_to: list[zmq.Socket] = []
        self.copies_to: list[zmq.Socket] = []
        for node_index, inst in remote:
            _, fabric, replication, copies = nodes[node_index]
            copies_to = (endpoint_of(copies, inst), zmq.PUSH) if copies else (endpoint_of(replication, inst), zmq.DEALER)
            pair = []
            for endpoint, kind in ((endpoint_of(fabric, inst), zmq.PUSH), copies_to):
                sock = reuse.pop(endpoint, None) or self.sockets.get(endpoint)
                if sock is None and endpoint:
                    sock = make_socket(zctx, kind, connect=endpoint, hwm=64)
                    sock.sndtimeo = FABRIC_SEND_TIMEOUT_MS
                self.sockets[endpoint] = sock
                pair.append(sock)
            self.originals_to.append(pair[0])
            self.copies_to.append(pair[1])
        for sock in reuse.values():
            if sock is not None:
                sock.close()
        # per bucket, once per epoch: the switch step is then one fancy index per batch
        self.n_buckets = len(routes.bucket_pair)
        self.of_bucket = self.of(routes.primary_targets(np.arange(self.n_buckets)))
        self.pair_of_bucket = routes.bucket_pair.copy()
        # the secondary's destination per bucket, -1 for none (or when not replicating)
        self.second_of_bucket = np.full(self.n_buckets, -1, dtype=np.int64)
        if replicate:
            sec = routes.pairs[routes.bucket_pair]
            has = sec[:, 2] != NONE
            self.second_of_bucket[has] = self.of(sec[has, 2] * TARGET_SCALE + sec[has, 3])

    def of(self, targets: np.ndarray) -> np.ndarray:
        """Destination index of each target id."""
        if self.all_local:
            return targets - self.self_base
        return self._dest_of_sorted[np.searchsorted(self._sorted, targets)]

    def rooms(self, rings: list[Ring], socks: list[zmq.Socket], only: set[int] | None = None) -> list[int]:
        """Room per destination: free ring slots here, a whole batch for a socket below its HWM.
        ``only``: the destinations to ask; the others get MAX_BATCH (nothing of the batch goes there)."""
        out = []
        for d, dest in enumerate([*rings, *socks]):
            if only is not None and d not in only:
                out.append(MAX_BATCH)
            elif d < len(rings):
                out.append(dest.free())
            else:
                out.append(MAX_BATCH if dest is not None and writable(dest) else 0)
        return out

    def close(self) -> None:
        for sock in self.sockets.values():
            if sock is not None:
                sock.close()


class StampingUnit:
    """One stamping unit inside the node's io process; ``step()`` moves one batch from its ring on.

    Its input ring (``in.u<u>``), flow table and journal (``stamper.u<u>``) and sent log are
    shared memory that outlives the io process: a successor recovers the batch a dead one
    was stamping and sends again what it had handed to ZeroMQ (see ``stamper.py``, ``sentlog.py``).
    """

    def __init__(self, topo: Topology, index: int, io: "IoShared"):
        self.index = index
        self.io = io
        self.in_ring = Ring.attach(topo.unit_ring(index), PACKET_DTYPE)
        self.stats = CounterBlock.attach(topo.stats(f"unit{index}"))
        capacity = topo.config.ingress.flows_per_unit
        self._table_mm = attach_segment(topo.stamper_table(index))
        self.stamper = Stamper(index, table=StamperTable.over(self._table_mm, capacity, fresh=False))
        # a predecessor may have died in the middle of a batch: undo it (or keep it, if released)
        self.recovered = self.stamper.recover(ring_head=self.in_ring.popped)
        self.sent_log = SentLog.attach(topo.sent_log(index))
        self.watch = StallWatch()
        self.idle_ns = int(topo.config.ingress.flow_idle_s * 1e9)
        self._v = self.stats.values
        self._i = {c: self.stats.index[c] for c in COUNTERS}

    def step(self) -> int:
        """Stamp and hand on what fits of the next batch; return how many packets were consumed.

        With replication each packet also goes, as a copy (dup = 1), to its pair's secondary.
        """
        view = self.in_ring.peek(MAX_BATCH)
        n = len(view)
        if n == 0:
            return 0
        sw = self.io.switch()
        buckets = bucket_of(view["key_hash"], sw.n_buckets)
        dest = sw.of_bucket[buckets]
        dest2 = sw.second_of_bucket[buckets] if self.io.replicate else None
        picked, consumed = self.plan(dest, dest2)
        if consumed == 0:
            self._v[self._i["blocked"]] += 1
            return 0
        self._v[self._i["dropped_stalled"]] += consumed - (consumed if picked is None else len(picked))
        keep = slice(0, consumed) if picked is None else picked
        batch, dest, buckets = view[keep], dest[keep], buckets[keep]
        batch["pair"] = sw.pair_of_bucket[buckets]  # a worker may serve several pairs
        if dest2 is not None:
            dest2 = dest2[keep]
        ok = self.stamper.stamp(batch, ring_head=self.in_ring.popped)
        if not ok.all():  # flow table full: new flows without a slot are dropped unstamped
            self._v[self._i["table_full"]] += int((~ok).sum())
            batch, dest, buckets = batch[ok], dest[ok], buckets[ok]
            dest2 = None if dest2 is None else dest2[ok]
        if len(buckets) <= FEW:   # np.add.at's fixed cost is a few plain additions many times over
            load = self.io.bucket_load
            for b in buckets.tolist():
                load[b] += 1.0
        else:
            np.add.at(self.io.bucket_load, buckets, 1.0)
        if dest2 is not None:  # copies first: a local copy is in its ring before its original can be
            self.hand_on_copies(batch, dest2)   # processed and prepared (the secondary votes on both)
        self.hand_on(batch, dest)
        self.in_ring.release(consumed)
        self.stamper.commit()  # after the release: a crash before it rolls the batch back
        self._v[self._i["received"]] += consumed
        self._v[self._i["stamped"]] += len(batch)
        return consumed

    def plan(self, dest: np.ndarray, dest2: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """(indices to take or None for the whole prefix, packets consumed from the unit's ring)."""
        n = len(dest)
        sw = self.io.switch()
        if dest2 is not None:
            # the copies need room in the secondaries' dup rings (remote ones: their 2PC sockets,
            # always drained); no stall rule here yet: a stuck secondary pushes back on its
            # primary, as 2PC would anyway. Only the destinations the batch has are asked.
            rooms = sw.rooms(self.io.in_rings, sw.originals_to, set(dest.tolist()))
            rooms2 = sw.rooms(self.io.dup_rings, sw.copies_to, set(dest2.tolist()))
            copies_to = np.where(dest2 >= 0, dest2, len(rooms2))  # no secondary: an unbounded dummy
            return None, min(fitting_prefix(dest, rooms), fitting_prefix(copies_to, rooms2 + [n]))
        rooms = sw.rooms(self.io.in_rings, sw.originals_to)   # every one: the stall rule watches them all
        if fitting_prefix(dest, rooms) == n:  # the common case: everything fits
            return None, n
        picked, consumed = plan_handoff(dest, rooms, self.watch.stuck(rooms, time.monotonic()))
        return (None if len(picked) == consumed else picked), consumed

    def resend_logged(self) -> int:
        """Send again what a predecessor handed to ZeroMQ for other nodes lately (it may have died with it)."""
        records = self.sent_log.recent(time.monotonic_ns())
        if len(records) == 0:
            return 0
        sw = self.io.switch()
        buckets = bucket_of(records["key_hash"], sw.n_buckets)
        copies = records["dup"] != 0
        originals = np.flatnonzero(~copies)
        if len(originals):
            self.hand_on(records[originals], sw.of_bucket[buckets[originals]])
        copies = np.flatnonzero(copies)
        if len(copies):
            to = sw.second_of_bucket[buckets[copies]]
            keep = to >= 0
            self.hand_on(records[copies[keep]], to[keep], copies=True)
        self._v[self._i["resent"]] += len(records)
        return len(records)

    def hand_on_copies(self, batch: np.ndarray, dest2: np.ndarray) -> None:
        copies = np.flatnonzero(dest2 >= 0)
        if len(copies):
            dups = batch[copies]  # a copy: the originals in the ring keep dup = 0
            dups["dup"] = 1
            self.hand_on(dups, dest2[copies], copies=True)
            self._v[self._i["duplicated"]] += len(copies)

    def hand_on(self, batch: np.ndarray, dest: np.ndarray, copies: bool = False) -> None:
        """Push each packet to its destination: a local ring (the instances' input rings; copies for
        secondaries to their dup rings) or a worker on another node."""
        sw, io = self.io.switch(), self.io
        rings = io.dup_rings if copies else io.in_rings
        if sw.all_local and len(rings) == 1:
            rings[0].push_some(batch)
            self.wake(0, copies)
            return
        socks = sw.copies_to if copies else sw.originals_to
        for k, part in split_by_instance(dest, sw.n_local + len(sw.remote)):
            if k < sw.n_local:
                rings[k].push_some(batch, part)
                self.wake(k, copies)
                continue
            instance = sw.remote[k - sw.n_local][1]
            self.sent_log.append(batch, part, time.monotonic_ns())  # before the send: see sentlog.py
            try:
                send_frames(socks[k - sw.n_local],
                            wire.encode_packets(sw.epoch, instance, batch, part, wire.COPIES if copies else wire.PACKETS),
                            copy=False)
            except zmq.Again:
                # full for FABRIC_SEND_TIMEOUT_MS although the room check saw space: the node is
                # gone (its packets have copies at their secondaries); waiting longer would stop
                # this unit, and every flow with it, until the routes move
                self._v[self._i["dropped_fabric"]] += len(part)
                continue
            self._v[self._i["sent_remote"]] += len(part)

    def wake(self, k: int, copies: bool) -> None:
        """Ring local instance k's bell this round: for its input always; for copies only once its dup
        ring holds COPY_WAKE_AT. A secondary needs its copies when the Prepare that names them
        comes (a wake-up of its own, and it drains its dup ring every round) or when its primary
        dies (the new routes ring every bell); waking it for each copy would cost a round per
        packet. The threshold bounds what waits in the ring while a primary is stalled."""
        if not copies or len(self.io.dup_rings[k]) >= COPY_WAKE_AT:
            self.io.rung.add(k)

    def expire(self, now_ns: int) -> None:
        self._v[self._i["expired"]] += self.stamper.expire(now_ns, self.idle_ns)
        self.publish()

    def publish(self) -> None:
        self.stats.set("flows", len(self.stamper))
        self.stats.set("new_flows", self.stamper.new_flows)

    def close(self) -> None:
        self.publish()
        self.in_ring.close()
        self.stats.close()
        self.sent_log.close()
        self.stamper = None  # drop the views before the mapping goes
        release_segment(self._table_mm, "", unlink=False)


class IoShared:
    """What the io's stamping units share: the switch (rebuilt per routes epoch), the instances'
    rings, and the set of local instances rung this round (each bell rung once per round)."""

    def __init__(self, topo: Topology, zctx: zmq.Context):
        self.topo = topo
        self.zctx = zctx
        self.replicate = topo.config.nf.replicate
        self.routes = Routes.attach(topo.routes())
        self.in_rings = [Ring.attach(topo.nf_ring(i), PACKET_DTYPE) for i in topo.instances]
        self.dup_rings = ([Ring.attach(topo.dup_ring(i), PACKET_DTYPE) for i in topo.instances]
                          if self.replicate else [])
        self.bells = [FdBell.attach(topo.nf_bell(i)) for i in topo.instances]
        self.rung: set[int] = set()
        # packets per bucket, halved every second (decay_bucket_load): the autoscaler's hot buckets
        self._load_mm = attach_segment(topo.bucket_load()) if topo.has_ingress else None
        self.bucket_load = (np.zeros(topo.config.ingress.buckets) if self._load_mm is None else
                            np.ndarray((topo.config.ingress.buckets,), dtype=np.float64, buffer=self._load_mm))
        self._switch = Switch(self._snapshot(), len(self.in_rings), zctx, replicate=self.replicate)

    def _snapshot(self) -> RouteTables:
        """The route set as it is now (a node's supervisor wrote one before it started the io)."""
        while (snap := self.routes.snapshot()) is None:
            time.sleep(0.0005)
        return snap

    def refresh(self) -> None:
        """At the start of a round only: a unit's batch is planned and handed on with one switch
        (a destination index means nothing under another epoch's switch)."""
        if self.routes.epoch != self._switch.epoch:
            snap = self.routes.snapshot()   # None while the supervisor writes: the next round sees it
            if snap is not None:
                self._switch = Switch(snap, len(self.in_rings), self.zctx, self._switch, self.replicate)

    def switch(self) -> Switch:
        return self._switch

    def ring_bells(self) -> None:
        """Wake the instances that got packets this round (one FIFO write each)."""
        for k in self.rung:
            self.bells[k].ring()
        self.rung.clear()

    def decay_bucket_load(self) -> None:
        """Once a second: the per-bucket counts halve, so they stay about twice the recent rate."""
        self.bucket_load *= 0.5

    def close(self) -> None:
        for r in self.in_rings + self.dup_rings:
            r.close()
        self.routes.close()
        self._switch.close()
        self.bucket_load = None
        if self._load_mm is not None:
            release_segment(self._load_mm, self.topo.bucket_load(), False)


