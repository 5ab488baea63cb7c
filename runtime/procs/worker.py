"""NF worker: input rings -> ordering unit -> NF -> output buffer -> egress ring.

One process per NF instance (paper IV-B):

1. Packets are taken from the input rings only while the output buffer has
   room (``batch_size - buffered``), so the input rings are the input buffer
   and they fill up (and the switch drops, counted) when the NF falls behind.
2. The ordering unit passes on packets in per-flow stamp order and keeps the
   rest pending (bounded by ``buffer_batches x batch_size``).
3. The NF processes what is ready as one numpy batch against its flow table.
4. The output buffer is released as one batch when it holds ``batch_size``
   packets or ``flush_us`` after its first packet went in (adaptive batching:
   at low rates a packet waits at most ``flush_us``, not for 63 others). With
   ``flush_on_idle`` (the default) it is also released as soon as the input
   rings are empty: waiting longer buys batching only if more packets are
   already on their way, so at low load every packet leaves at once and at
   high load batches fill by themselves (group commit; latency no longer
   depends on the rate).
   Release = forwarded packets pushed to the supervisor-owned egress ring.
   Later, replication commits the batch first (``release`` is the hook).

A worker adopts a flow it has not seen at whatever seq it arrives with, and
skips a gap that has not filled within ``gap_timeout_ms``: a restarted worker
(state lost, no replication yet) or a route change sends it flows mid-stream,
and it must not wait for seqs that went elsewhere (see ordering.py).
"""

from __future__ import annotations

import time

import numpy as np

from deft.nfs import Context, make_nf
from deft.runtime.dataplane.ordering import OrderingUnit
from deft.runtime.dataplane.packet import DROP, FORWARD, PACKET_DTYPE, copy_records
from deft.runtime.ring import Doorbell, Ring
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

COUNTERS = [
    "ready", "received", "processed", "released", "dropped_by_nf", "stale", "duplicate",
    "pending_overflow", "pending", "batches", "egress_waits", "flows", "nf_errors", "adopted", "gaps_skipped",
    "expired",
    # replication ([nf] replicate): as primary, as secondary
    "repl_committed", "repl_in_flight", "repl_staged", "replica_committed", "replica_flows", "replica_buffered",
    "duplicates", "repl_refused", "repl_unknown_duplicates", "repl_bad_frames",
]


class OutputBuffer:
    """Processed packets waiting to be released together; time is passed in."""

    def __init__(self, batch_size: int, extra: int, flush_ns: int):
        self.batch_size = batch_size
        self.records = np.zeros(batch_size + extra, dtype=PACKET_DTYPE)
        self.n = 0
        self.flush_ns = flush_ns
        self.deadline = 0

    @property
    def room(self) -> int:
        return self.batch_size - self.n

    def append(self, records: np.ndarray, now_ns: int) -> None:
        if self.n == 0:
            self.deadline = now_ns + self.flush_ns
        copy_records(self.records[self.n: self.n + len(records)], records)
        self.n += len(records)

    def due(self, now_ns: int) -> bool:
        return self.n >= self.batch_size or (self.n > 0 and now_ns >= self.deadline)

    def take(self) -> np.ndarray:
        out = self.records[: self.n]
        self.n = 0
        return out


class Worker:
    def __init__(self, topo: Topology, index: int, stop, log, restarted: bool):
        cfg = topo.config
        self.stop = stop
        self.log = log
        self.inputs = [Ring.attach(topo.nf_ring(index, u), PACKET_DTYPE) for u in topo.units]
        self.inputs.append(Ring.attach(topo.fabric_ring(index), PACKET_DTYPE))  # from other nodes' units
        self.dup_inputs = ([Ring.attach(topo.dup_ring(index, u), PACKET_DTYPE) for u in topo.units]
                           + [Ring.attach(topo.fabric_dup_ring(index), PACKET_DTYPE)]) if cfg.nf.replicate else []
        self.bell = Doorbell.attach(topo.nf_bell(index))
        self.egress = Ring.attach(topo.egress_ring(index), PACKET_DTYPE)
        self.egress_bell = Doorbell.attach(topo.egress_bell())
        self.stats = CounterBlock.attach(topo.stats(f"nf{index}"))
        self.ctx = Context(index, cfg.nf.instances, seed=index)
        self.nf = make_nf(cfg.nf.kind, cfg.nf_params(), self.ctx)
        self.table = self.nf.new_table()
        capacity = cfg.nf.input_capacity
        # every path into a worker is FIFO; only a route change sends a flow here mid-stream
        self.ordering = OrderingUnit(PACKET_DTYPE, capacity, adopt_unknown=True)
        self.gap_ns = cfg.nf.gap_timeout_ms * 1_000_000
        self.next_gap_check = 0
        self.idle_ns = int(cfg.nf.flow_idle_s * 1e9)
        self.next_expiry = 0
        self.next_publish = 0
        self.out = OutputBuffer(cfg.nf.batch_size, capacity, cfg.nf.flush_us * 1000)
        self.flush_on_idle = cfg.nf.flush_on_idle
        self._next_input = 0
        # counters live in plain ints and reach shared memory in one numpy write per batch
        self.count = dict.fromkeys(COUNTERS[1:], 0)
        self.repl = None
        if cfg.nf.replicate:
            from deft.runtime.procs.replica import Replication

            self.repl = Replication(topo, index, self, log)
        self._published = [c for c in self.stats.fields if c != "ready"]
        self._published_at = np.array([self.stats.index[c] for c in self._published], dtype=np.int64)

    def pull_duplicates(self) -> int:
        """Buffer the copies for the pairs this worker is the secondary of (independent of its own output)."""
        taken = 0
        for ring in self.dup_inputs:
            view = ring.peek(1024)
            if len(view):
                self.count["duplicates"] += len(view)
                self.repl.on_duplicates(view)
                ring.release(len(view))
                taken += len(view)
        return taken

    def pull(self) -> int:
        """Move up to the output buffer's room from the input rings through the NF."""
        taken = self.pull_duplicates() if self.dup_inputs else 0
        n_in = len(self.inputs)
        for k in range(n_in):
            room = self.out.room
            if room <= 0:
                break
            ring = self.inputs[(self._next_input + k) % n_in]
            view = ring.peek(room)
            if len(view) == 0:
                continue
            self.process(view)
            ring.release(len(view))
            taken += len(view)
        self._next_input = (self._next_input + 1) % n_in
        return taken

    def process(self, arrived: np.ndarray) -> None:
        if arrived["dup"].any():  # copies come through the dup rings; one on this path is still a copy, never input
            dup = arrived["dup"] != 0
            self.count["duplicates"] += int(dup.sum())
            if self.repl is not None:
                self.repl.on_duplicates(arrived[dup])
            arrived = arrived[~dup]
            if len(arrived) == 0:
                return
        self.count["received"] += len(arrived)
        self.run_nf(self.ordering.order(arrived, time.monotonic_ns()))

    def expire_idle(self, now_ns: int) -> None:
        """Once a second: forget flows whose newest packet is older than flow_idle_s (packet time).

        Table and ordering state of a flow that stopped would otherwise stay for
        ever. NFs with their own expiry (the NAT's idle_timeout_s) see the rows
        go like any other removal; the removal is part of the next state clock.
        """
        if now_ns < self.next_expiry:
            return
        self.next_expiry = now_ns + 1_000_000_000
        rows = self.table.idle_rows(self.ctx.now_ns, self.idle_ns)
        if len(rows):
            flows = self.table.flow_ids[rows].tolist()
            self.table.remove(rows)
            self.ordering.forget(flows)
            self.count["expired"] += len(flows)

    def skip_gaps(self, now_ns: int) -> None:
        """Every few ms: flows whose gap did not fill within gap_timeout_ms go on without it."""
        if now_ns >= self.next_gap_check and self.ordering.waiting_since:
            self.next_gap_check = now_ns + 10_000_000
            self.run_nf(self.ordering.skip_gaps(now_ns, self.gap_ns))

    def run_nf(self, ready: np.ndarray) -> None:
        if len(ready) == 0:
            return
        rows, new_rows = self.table.rows_for(ready["flow_id"])
        self.table.last_ns[rows] = ready["ts_ns"]  # per flow the last write wins: packets are in order
        self.ctx.now_ns = int(ready["ts_ns"].max())
        try:
            ready["verdict"] = self.nf.process(ready, rows, new_rows, self.table, self.ctx)
        except Exception:  # noqa: BLE001 - an NF bug must cost its batch, not the worker and all its state
            self.count["nf_errors"] += len(ready)
            ready["verdict"] = DROP
            if self.count["nf_errors"] == len(ready):  # log the first one in full, count the rest
                self.log.exception("NF %s raised on a batch of %d packets; batch dropped", self.nf.name, len(ready))
        self.out.append(ready, time.monotonic_ns())
        self.count["processed"] += len(ready)

    def release(self) -> None:
        batch = self.out.take()
        verdict = batch["verdict"]
        forward = None if not verdict.any() else np.flatnonzero(verdict == FORWARD)
        n_forward = len(batch) if forward is None else len(forward)
        if self.repl is not None and self.repl.replicating:
            self.repl.submit(batch, forward)  # leaves for the egress on the 2PC's Release
        else:
            self.push_egress(batch, forward)
            self.count["released"] += n_forward
        c = self.count
        c["dropped_by_nf"] += len(batch) - n_forward
        c["batches"] += 1
        self.publish()

    def publish(self) -> None:
        o, c = self.ordering, self.count
        c["stale"], c["duplicate"], c["pending_overflow"] = o.stale, o.duplicate, o.overflow
        c["adopted"], c["gaps_skipped"] = o.adopted, o.gaps_skipped
        c["pending"], c["flows"] = o.pending_count, len(self.table)
        if self.repl is not None:
            c.update(self.repl.counters())
        nf = self.nf.stats
        self.stats.values[self._published_at] = [
            c[name] if name in c else nf.get(name[3:], 0) for name in self._published
        ]

    def push_egress(self, records: np.ndarray, index: np.ndarray | None) -> None:
        """Hand a batch (or ``records[index]``) to the egress sender; wait, never drop, while its ring is full."""
        total = len(records) if index is None else len(index)
        done = 0
        while done < total:
            if index is None:
                done += self.egress.push_some(records[done:])
            else:
                done += self.egress.push_some(records, index[done:])
            self.egress_bell.ring()
            if done < total:
                self.count["egress_waits"] += 1
                if self.stop:
                    return
                time.sleep(0.0002)

    def run(self) -> None:
        flush_s = self.out.flush_ns / 1e9
        while not self.stop:
            got = self.pull()
            now = time.monotonic_ns()
            if self.repl is not None:
                self.repl.poll(now)
                if now >= self.next_publish:  # a secondary releases nothing: publish on a timer too
                    self.next_publish = now + 100_000_000
                    self.publish()
            self.skip_gaps(now)
            self.expire_idle(now)
            if self.should_release(now):
                self.release()
                continue
            if got == 0:
                wait = (self.out.deadline - now) / 1e9 if self.out.n else 0.1
                if self.ordering.waiting_since:  # a gap may time out before anything arrives
                    wait = min(wait, 0.01)
                if self.repl is not None:  # votes and commits arrive on sockets, not on the bell
                    wait = min(wait, 0.001)
                self.bell.wait(max(min(wait, 0.1), 0.00005 if flush_s else 0.0))

    def should_release(self, now: int) -> bool:
        """Full, past the flush deadline, or idle; with replication, also a free 2PC window.

        Replicating, "idle" means idle with no batch in flight: while one is being
        committed the next one keeps filling (group commit), so a 2PC round trip
        carries as many packets as arrived during it.
        """
        if self.out.n == 0:
            return False
        repl = self.repl
        if repl is not None and repl.replicating and not repl.window_open():
            return False
        if self.out.due(now):
            return True
        if not (self.flush_on_idle and self.inputs_empty()):
            return False
        return repl is None or not repl.replicating or repl.in_flight() == 0

    def inputs_empty(self) -> bool:
        return all(len(r) == 0 for r in self.inputs)

    def close(self) -> None:
        if self.repl is not None:
            self.repl.close()
        for r in self.inputs + self.dup_inputs:
            r.close()
        self.egress.close()
        self.stats.close()


def counter_names(kind: str) -> list[str]:
    from deft.nfs import nf_class

    return COUNTERS + [f"nf.{c}" for c in nf_class(kind).counters]


def run(topo: Topology, index: int, stop, log, restarted: bool = False) -> None:
    worker = Worker(topo, index, stop, log, restarted)
    log.info("NF worker %d (%s) up%s", index, topo.config.nf.kind, " after a restart" if restarted else "")
    worker.stats.set("ready", 1)
    try:
        worker.run()
    finally:
        worker.stats.set("ready", 0)
        worker.close()
