"""Stamping unit: stamp (flow_id, seq), then switch each packet to its NF instance's ring.

The switch step reads the routes (bucket -> pair -> primary node and
instance) from shared memory that the supervisor owns; packets for an
instance on another node go to that node's fabric over ZMQ. Room in the instance rings is checked *before*
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
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.sentlog import SentLog
from deft.runtime.dataplane.routes import NONE, TARGET_SCALE, W_PAIRS, Routes
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.dataplane.stamper import Stamper, StamperTable, bucket_of
from deft.runtime.ring import Doorbell, Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.ring.shm import attach_segment, release_segment
from deft.runtime.sockets import make_socket
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

MAX_BATCH = 256
FABRIC_SEND_TIMEOUT_MS = 50
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


def split_by_instance(instance: np.ndarray, n_inst: int) -> list[np.ndarray]:
    """Indices of the batch's packets per instance, in arrival order."""
    if len(instance) <= 4:  # a few packets: a Python pass beats one numpy call per instance
        parts: list[list[int]] = [[] for _ in range(n_inst)]
        for j, i in enumerate(instance.tolist()):
            parts[i].append(j)
        return [np.array(p, dtype=np.int64) for p in parts]
    return [np.flatnonzero(instance == i) for i in range(n_inst)]


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


class Destinations:
    """Where the switch can send a packet: this node's instances, then instances on other nodes.

    Destination d < n_local is local instance d (its ring); d >= n_local is a
    (node, instance) reached through that node's fabric (a PUSH socket per node).
    Rebuilt whenever the routes' epoch changes.
    """

    def __init__(self, routes: Routes, n_local: int, zctx: zmq.Context, old: "Destinations | None" = None,
                 replicate: bool = False):
        self.epoch = routes.epoch
        self.n_local = n_local
        me = routes.self_node
        n_pairs = int(routes.words[W_PAIRS])
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
        for node_index in sorted({n for n, _ in remote}):
            fabric = nodes[node_index][1]
            sock = reuse.pop(fabric, None)
            if sock is None:
                sock = make_socket(zctx, zmq.PUSH, connect=fabric, hwm=64)
                sock.sndtimeo = FABRIC_SEND_TIMEOUT_MS
            self.sockets[fabric] = sock
        for sock in reuse.values():
            sock.close()
        self.socket_of = [self.sockets[nodes[n][1]] for n, _ in remote]
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

    def rooms(self, rings: list[Ring]) -> list[int]:
        remote = [MAX_BATCH if s.poll(0, zmq.POLLOUT) else 0 for s in self.socket_of]
        return [r.free() for r in rings] + remote

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


class StampingUnit:
    """One stamping unit's loop body; ``step()`` moves one batch from its ring to the instances."""

    def __init__(self, topo: Topology, index: int):
        self.n_inst = topo.config.nf.instances
        self.in_ring = Ring.attach(topo.unit_ring(index), PACKET_DTYPE)
        self.bell = Doorbell.attach(topo.unit_bell(index))
        self.out_rings = [Ring.attach(topo.nf_ring(i, index), PACKET_DTYPE) for i in topo.instances]
        self.out_bells = [FdBell.attach(topo.nf_bell(i)) for i in topo.instances]
        self.routes = Routes.attach(topo.routes())
        self.zctx = zmq.Context()
        self.replicate = topo.config.nf.replicate
        self.dest = Destinations(self.routes, self.n_inst, self.zctx, replicate=self.replicate)
        self.dup_rings = ([Ring.attach(topo.dup_ring(i, index), PACKET_DTYPE) for i in topo.instances]
                          if self.replicate else [])
        self.stats = CounterBlock.attach(topo.stats(f"unit{index}"))
        capacity = topo.config.ingress.flows_per_unit
        self._table_mm = attach_segment(topo.stamper_table(index))
        self.stamper = Stamper(index, table=StamperTable.over(self._table_mm, capacity, fresh=False))
        # a predecessor may have died in the middle of a batch: undo it (or keep it, if released)
        self.recovered = self.stamper.recover(ring_head=self.in_ring.popped)
        self.sent_log = SentLog.attach(topo.sent_log(index))
        self.watch = StallWatch()
        self.idle_ns = int(topo.config.ingress.flow_idle_s * 1e9)
        self.next_expiry = time.monotonic() + 1.0
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
        if self.routes.epoch != self.dest.epoch:
            self.dest = Destinations(self.routes, self.n_inst, self.zctx, self.dest, self.replicate)
        buckets = bucket_of(view["key_hash"], self.dest.n_buckets)
        dest = self.dest.of_bucket[buckets]
        dest2 = self.dest.second_of_bucket[buckets] if self.replicate else None
        picked, consumed = self.plan(dest, dest2, self.dest.rooms(self.out_rings))
        if consumed == 0:
            self._v[self._i["blocked"]] += 1
            return 0
        self._v[self._i["dropped_stalled"]] += consumed - (consumed if picked is None else len(picked))
        keep = slice(0, consumed) if picked is None else picked
        batch, dest, buckets = view[keep], dest[keep], buckets[keep]
        batch["pair"] = self.dest.pair_of_bucket[buckets]  # a worker may serve several pairs
        if dest2 is not None:
            dest2 = dest2[keep]
        ok = self.stamper.stamp(batch, ring_head=self.in_ring.popped)
        if not ok.all():  # flow table full: new flows without a slot are dropped unstamped
            self._v[self._i["table_full"]] += int((~ok).sum())
            batch, dest = batch[ok], dest[ok]
            dest2 = None if dest2 is None else dest2[ok]
        self.hand_on(batch, dest)
        if dest2 is not None:
            self.hand_on_copies(batch, dest2)
        self.in_ring.release(consumed)
        self.stamper.commit()  # after the release: a crash before it rolls the batch back
        self._v[self._i["received"]] += consumed
        self._v[self._i["stamped"]] += len(batch)
        return consumed

    def plan(self, dest: np.ndarray, dest2: np.ndarray | None, rooms: list[int]) -> tuple[np.ndarray | None, int]:
        """(indices to take or None for the whole prefix, packets consumed from the unit's ring)."""
        n = len(dest)
        if dest2 is not None:
            # the copies need room in the secondaries' dup rings (remote ones share the fabric socket);
            # no stall rule here yet: a stuck secondary pushes back on its primary, as 2PC would anyway
            rooms2 = [r.free() for r in self.dup_rings] + rooms[len(self.dup_rings):]
            copies_to = np.where(dest2 >= 0, dest2, len(rooms2))  # no secondary: an unbounded dummy
            return None, min(fitting_prefix(dest, rooms), fitting_prefix(copies_to, rooms2 + [n]))
        if fitting_prefix(dest, rooms) == n:  # the common case: everything fits
            return None, n
        picked, consumed = plan_handoff(dest, rooms, self.watch.stuck(rooms, time.monotonic()))
        return (None if len(picked) == consumed else picked), consumed

    def resend_logged(self) -> int:
        """Send again what a predecessor handed to ZeroMQ for other nodes lately (it may have died with it)."""
        records = self.sent_log.recent(time.monotonic_ns())
        if len(records) == 0:
            return 0
        buckets = bucket_of(records["key_hash"], self.dest.n_buckets)
        copies = records["dup"] != 0
        originals = np.flatnonzero(~copies)
        if len(originals):
            self.hand_on(records[originals], self.dest.of_bucket[buckets[originals]])
        copies = np.flatnonzero(copies)
        if len(copies):
            to = self.dest.second_of_bucket[buckets[copies]]
            keep = to >= 0
            self.hand_on(records[copies[keep]], to[keep], self.dup_rings)
        self._v[self._i["resent"]] += len(records)
        return len(records)

    def hand_on_copies(self, batch: np.ndarray, dest2: np.ndarray) -> None:
        copies = np.flatnonzero(dest2 >= 0)
        if len(copies):
            dups = batch[copies]  # a copy: the originals in the ring keep dup = 0
            dups["dup"] = 1
            self.hand_on(dups, dest2[copies], self.dup_rings)
            self._v[self._i["duplicated"]] += len(copies)

    def hand_on(self, batch: np.ndarray, dest: np.ndarray, rings: list[Ring] | None = None) -> None:
        """Push each packet to its destination: a local ring (``rings``, default the instances'
        input rings; the copies for secondaries go to their dup rings) or another node's fabric."""
        d = self.dest
        rings = self.out_rings if rings is None else rings
        if d.all_local and self.n_inst == 1:
            rings[0].push_some(batch)
            self.out_bells[0].ring()
            return
        for k, part in enumerate(split_by_instance(dest, d.n_local + len(d.remote))):
            if not len(part):
                continue
            if k < d.n_local:
                rings[k].push_some(batch, part)
                self.out_bells[k].ring()
            else:
                instance = d.remote[k - d.n_local][1]
                self.sent_log.append(batch, part, time.monotonic_ns())  # before the send: see sentlog.py
                try:
                    d.socket_of[k - d.n_local].send_multipart(
                        wire.encode_packets(d.epoch, instance, batch, part), copy=False)
                except zmq.Again:
                    # full for FABRIC_SEND_TIMEOUT_MS although the room check saw space: the node is
                    # gone (its packets have copies at their secondaries); waiting longer would stop
                    # this unit, and every flow with it, until the routes move
                    self._v[self._i["dropped_fabric"]] += len(part)
                    continue
                self._v[self._i["sent_remote"]] += len(part)

    def idle(self) -> None:
        """Nothing to do: sleep until rung, and now and then forget idle flows."""
        self.bell.wait(0.1)
        if time.monotonic() > self.next_expiry:
            self.stats.add("expired", self.stamper.expire(time.monotonic_ns(), self.idle_ns))
            self.publish()
            self.next_expiry = time.monotonic() + 1.0

    def publish(self) -> None:
        self.stats.set("flows", len(self.stamper))
        self.stats.set("new_flows", self.stamper.new_flows)

    def close(self) -> None:
        self.in_ring.close()
        for r in self.out_rings:
            r.close()
        for r in self.dup_rings:
            r.close()
        self.routes.close()
        self.dest.close()
        self.zctx.term()
        self.stats.close()
        self.sent_log.close()
        self.stamper = None  # drop the views before the mapping goes
        release_segment(self._table_mm, "", unlink=False)


def run(topo: Topology, index: int, stop, log, restarted: bool = False) -> None:
    unit = StampingUnit(topo, index)
    resent = unit.resend_logged()
    log.info("stamping unit %d up (%d NF instance(s), %d flows carried over, journal %s, %d remote sends repeated)",
             index, unit.n_inst, len(unit.stamper), unit.recovered, resent)
    unit.stats.set("ready", 1)
    try:
        while not stop:
            if unit.step() == 0:
                if len(unit.in_ring):
                    time.sleep(0.0001)  # blocked by a full instance ring: let the worker run
                else:
                    unit.idle()
    finally:
        unit.publish()
        unit.stats.set("ready", 0)
        unit.close()
