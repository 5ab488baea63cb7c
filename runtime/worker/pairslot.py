"""One pair served by a worker as its primary: NF, flow table, ordering unit, output buffer.

A pair is a logical NF instance (the unit of placement and of failover): the
routes give each one a primary and maybe a secondary. A worker normally is
the primary of one pair; after a take-over it is the primary of the pair it
was the secondary of as well, so it keeps one ``PairSlot`` per pair and
switches every arriving packet to its pair's slot.

Global operations (NFs with ``uses_globals``). With a context whose
``globals`` commits at once (``LocalGlobals``, in tests) they are applied
inside ``apply_nf``. In a worker the ops of every NF call go with the output
buffer: ``segments`` holds, per call, its packets and ops; at release the
worker takes the buffer as a ``PendingBatch`` (``hold``), commits its ops as
one entry and, once the results are in, calls ``apply_results`` (the NF's
``on_global_results`` per call, in order) before releasing it. While a batch
waits the slot processes nothing: packets that arrive for it are ``held``
(so the state clock captured at release covers exactly that batch, and later
batches cannot overtake it) and go through the ordering unit on ``resume``.

The NF's context is the pair's, not the worker's: ``instance_index`` = the
pair, ``instance_count`` = the number of pairs, seed = the pair. So a NAT's
port slice belongs to the pair and moves with it, and a secondary replaying
the pair's packets draws the same random numbers as its primary did.
"""

from __future__ import annotations

import time

import numpy as np

from deft.nfs import Context, make_nf
from deft.runtime.dataplane.ordering import OrderingUnit
from deft.runtime.dataplane.packet import DROP, PACKET_DTYPE, copy_records

# per-slot counters that the worker sums over its slots (and keeps for retired ones)
SLOT_COUNTERS = ("received", "processed", "nf_errors", "expired", "replayed")

#: The 2PC window: batch t's global entry is session slot (<prefix>/<t % W>, t // W + 1), so the
#: up to W batches in flight have a client each and a replay of batch t re-proposes the same slot.
GLOBAL_WINDOW = 4


def replay_prefix(pair: int, node: str, instance: int, epoch: int) -> str:
    """Session name of the replayable batches of ``pair`` from the primary ``node``/``instance`` under 2PC
    ``epoch`` (what its secondary knows of it, so a take-over re-proposes them under the same name)."""
    return f"pair{pair}/{node}.{instance}/e{epoch}"


def session_of(prefix: str, t: int) -> tuple[str, int]:
    """(client, seq) of output batch ``t`` of a pair whose sessions are named ``prefix``."""
    return f"{prefix}/{t % GLOBAL_WINDOW}", t // GLOBAL_WINDOW + 1


#: After a take-over a flow waits this long for a missing packet (not ``gap_timeout_ms``): after a
#: planned hand-over the old primary forwards what it held and what still reaches it (forward.py),
#: and a busy old primary may take longer than a gap timeout to see the routes that retired it.
TAKEOVER_GAP_NS = 1_000_000_000


class PendingBatch:
    """An output batch held until its global ops are committed (its records are copies)."""

    __slots__ = ("records", "inputs", "segments", "ops", "batch_id", "client", "seq", "entry", "req_id",
                 "retry_at", "results", "sent_ns")

    def __init__(self, records, inputs, segments, ops):
        self.records = records
        self.inputs = inputs
        self.segments = segments   # [(start, end, first op, end op)] per NF call, in order
        self.ops = ops
        self.batch_id = -1         # the 2PC batch id it must go out as (replayable batches), else -1
        self.client = ""
        self.seq = 0
        self.entry = b""
        self.req_id = b""
        self.retry_at = 0.0
        self.results = None        # the entry's result once applied (a list, or STALE)
        self.sent_ns = 0


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


class PairSlot:
    def __init__(self, cfg, pair: int, n_pairs: int, log, *, adopt_unknown: bool = True, table=None,
                 next_expected: dict[int, int] | None = None, keep_inputs: bool = False, global_ops=None):
        self.pair = pair
        self.log = log
        self.ctx = Context(pair, n_pairs, seed=pair, global_ops=global_ops)
        self.nf = make_nf(cfg.nf.kind, cfg.nf_params(), self.ctx)
        self.uses_globals = self.nf.uses_globals
        # LocalGlobals (no Raft): ops are applied at once, in apply_nf
        self.commit_now = getattr(self.ctx.globals, "commit", None)
        self.segments: list[tuple[int, int, int, int]] = []  # the output buffer's NF calls with their ops
        self.ops: list = []                                   # ... and the ops, in order
        self.last_ops: list = []                              # the ops of the last apply_nf
        self.waiting: PendingBatch | None = None              # the batch waiting for its results
        self.held: list[np.ndarray] = []                      # what arrived meanwhile
        self.held_n = 0
        self.frozen_until = 0   # monotonic ns a hand-over's freeze lapses (freeze.py); 0: not frozen
        # until this monotonic ns, gaps wait at least gap_grace_ns: the old primary (a take-over,
        # takeover.py) or a move's source (bucketmove.py) may still forward what it held
        self.gap_grace_until = 0
        self.gap_grace_ns = TAKEOVER_GAP_NS
        self.move_out = None       # a bucket move's hold on some of its buckets (worker/bucketmove.py)
        # packets of buckets the routes give another pair go there (the worker's ``divert``: they came
        # late after a bucket move, or from a replica's buffer); None: no route set to judge by
        self.divert = None
        self.global_serial = 0                                # batch numbers without a 2PC core
        self.session_name = f"pair{pair}/local"               # sessions of unreplayable batches (the worker names it)
        self.session_epoch = None                             # the 2PC epoch this worker's Sync started
        if table is None:
            self.table = self.nf.new_table()
        else:
            self.table = table
            self.nf.rebuild(table)
        capacity = cfg.nf.input_capacity
        # every path into a worker is FIFO; only a route change sends a fresh slot a flow mid-stream
        self.ordering = OrderingUnit(PACKET_DTYPE, capacity, adopt_unknown=adopt_unknown)
        if next_expected:
            self.ordering.next_expected.update(next_expected)
        self.out = OutputBuffer(cfg.nf.batch_size, capacity, cfg.nf.flush_us * 1000)
        # Replicating, the packets of each output batch as they were before the NF rewrote them: a
        # secondary that never got some of them (it became the secondary after they were sent) asks.
        self.inputs = OutputBuffer(cfg.nf.batch_size, capacity, 0) if keep_inputs else None
        self.count = dict.fromkeys(SLOT_COUNTERS, 0)
        self.role = None  # the primary's replication (PrimaryRole), when the pair has a secondary
        self.taken_core = None  # after a take-over: the 2PC core that continues the pair's batch ids

    @property
    def frozen(self) -> bool:
        """Frozen for a planned hand-over: new input is held, not processed."""
        return self.frozen_until != 0

    def process(self, arrived: np.ndarray) -> None:
        if self.divert is not None:
            arrived = self.divert(self, arrived)
        if self.move_out is not None:
            arrived = self.move_out.take(arrived)
        if not len(arrived):
            return
        if self.waiting is not None or self.frozen:
            self.held.append(arrived.copy())
            self.held_n += len(arrived)
            return
        self.count["received"] += len(arrived)
        self.run_nf(self.ordering.order(arrived, time.monotonic_ns()))

    def run_nf(self, ready: np.ndarray) -> None:
        if len(ready):
            if self.inputs is not None:
                self.inputs.append(ready, 0)
            start = self.out.n
            self.out.append(self.apply_nf(ready), time.monotonic_ns())
            if self.uses_globals:
                k = len(self.ops)
                self.ops += self.last_ops
                self.segments.append((start, self.out.n, k, len(self.ops)))
                self.last_ops = []

    # -- global operations ------------------------------------------------------------------------
    def next_serial(self) -> int:
        """The next number of a batch under this slot's own sessions (``session_name``: not replayable)."""
        t, self.global_serial = self.global_serial, self.global_serial + 1
        return t

    def has_global_ops(self) -> bool:
        """The output buffer's NF calls queued global ops (its release must wait for their results)."""
        return bool(self.ops)

    def hold(self) -> PendingBatch:
        """Take the output buffer as a batch that waits for its global results; the slot pauses."""
        segments, ops = self.segments, self.ops
        batch, inputs = self.take_output()
        pending = PendingBatch(batch.copy(), None if inputs is None else inputs.copy(), segments, ops)
        self.waiting = pending
        return pending

    def take_output(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The output batch and, replicating, its packets as they arrived (views, valid until the next append)."""
        self.segments, self.ops = [], []
        return self.out.take(), None if self.inputs is None else self.inputs.take()

    def apply_results(self, records: np.ndarray, segments, results: list) -> None:
        """The NF's final verdicts from the committed results, per NF call in order (written into ``records``).

        Every call of the batch is judged again, those without ops with no results:
        an earlier call's results may have changed what it decided (a source blocked).
        """
        for start, end, k0, k1 in segments:
            part = records[start:end]
            try:
                part["verdict"] = self.nf.on_global_results(part, results[k0:k1], self.table, self.ctx)
            except Exception:  # noqa: BLE001 - as in apply_nf: the batch, not the worker
                self.count["nf_errors"] += len(part)
                part["verdict"] = DROP
                self.log.exception("NF %s raised in on_global_results; %d packets dropped", self.nf.name, len(part))

    def resume(self) -> None:
        """The waiting batch is released: process what arrived meanwhile."""
        self.waiting = None
        self.process_held()

    def thaw(self) -> None:
        """A freeze ended without a hand-over: go on with what arrived meanwhile."""
        self.frozen_until = 0
        if self.waiting is None:
            self.process_held()

    def process_held(self) -> None:
        held, self.held, self.held_n = self.held, [], 0
        for arrived in held:
            self.process(arrived)

    def skip_gaps(self, now_ns: int, gap_ns: int) -> None:
        if self.ordering.waiting_since and self.waiting is None and not self.frozen:
            if now_ns < self.gap_grace_until:   # just taken over, or buckets just moved in
                gap_ns = max(gap_ns, self.gap_grace_ns)
            else:
                self.gap_grace_ns = TAKEOVER_GAP_NS
            self.run_nf(self.ordering.skip_gaps(now_ns, gap_ns))

    def apply_nf(self, ready: np.ndarray) -> np.ndarray:
        """The NF on packets in order (verdicts and rewrites in place); returns ``ready``."""
        rows, new_rows = self.table.rows_for(ready["flow_id"])
        self.table.last_ns[rows] = ready["ts_ns"]  # per flow the last write wins: packets are in order
        self.table.key_hash[rows] = ready["key_hash"]   # its bucket, for a bucket move (bucketmove.py)
        self.ctx.now_ns = int(ready["ts_ns"].max())
        try:
            ready["verdict"] = self.nf.process(ready, rows, new_rows, self.table, self.ctx)
            if self.uses_globals:
                ops = self.ctx.globals.take()
                if ops and self.commit_now is not None:  # in-process global state: final at once
                    ready["verdict"] = self.nf.on_global_results(ready, self.commit_now(ops), self.table, self.ctx)
                    ops = []
                self.last_ops = ops
        except Exception:  # noqa: BLE001 - an NF bug must cost its batch, not the worker and all its state
            if self.uses_globals:
                self.ctx.globals.take()  # what the failed call queued must not join the next batch
                self.last_ops = []
            self.count["nf_errors"] += len(ready)
            ready["verdict"] = DROP
            if self.count["nf_errors"] == len(ready):  # log the first one in full, count the rest
                self.log.exception("NF %s raised on a batch of %d packets; batch dropped", self.nf.name, len(ready))
        self.count["processed"] += len(ready)
        return ready

    def replay(self, records: np.ndarray) -> np.ndarray:
        """A take-over's replay: exactly these packets, in this order, past the ordering unit.

        Its global ops are left in ``last_ops``: the worker commits them as the
        original batch's entry and calls ``apply_results``.
        """
        done = self.apply_nf(records)
        ne = self.ordering.next_expected
        for f, s in zip(records["flow_id"].tolist(), records["seq"].tolist()):
            if s >= ne.get(f, 1):
                ne[f] = s + 1
        self.count["replayed"] += len(records)
        return done


    def expire_idle(self, idle_ns: int) -> None:
        """Forget flows whose newest packet is older than ``idle_ns`` (packet time).

        Table and ordering state of a flow that stopped would otherwise stay for
        ever. NFs with their own expiry (the NAT's idle_timeout_s) see the rows
        go like any other removal; the removal is part of the next state clock.
        """
        if self.waiting is not None:  # the waiting batch's state clock must be its own: next time
            return
        rows = self.table.idle_rows(self.ctx.now_ns, idle_ns)
        if len(rows):
            flows = self.table.flow_ids[rows].tolist()
            self.table.remove(rows)
            self.ordering.forget(flows)
            self.count["expired"] += len(flows)
