"""One pair served by a worker as its primary: NF, flow table, ordering unit, output buffer.

A pair is a logical NF instance (the unit of placement and of failover): the
routes give each one a primary and maybe a secondary. A worker normally is
the primary of one pair; after a take-over it is the primary of the pair it
was the secondary of as well, so it keeps one ``PairSlot`` per pair and
switches every arriving packet to its pair's slot.

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
                 next_expected: dict[int, int] | None = None, keep_inputs: bool = False):
        self.pair = pair
        self.log = log
        self.ctx = Context(pair, n_pairs, seed=pair)
        self.nf = make_nf(cfg.nf.kind, cfg.nf_params(), self.ctx)
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

    def process(self, arrived: np.ndarray) -> None:
        self.count["received"] += len(arrived)
        self.run_nf(self.ordering.order(arrived, time.monotonic_ns()))

    def run_nf(self, ready: np.ndarray) -> None:
        if len(ready):
            if self.inputs is not None:
                self.inputs.append(ready, 0)
            self.out.append(self.apply_nf(ready), time.monotonic_ns())

    def take_output(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The output batch and, replicating, its packets as they arrived (views, valid until the next append)."""
        return self.out.take(), None if self.inputs is None else self.inputs.take()

    def apply_nf(self, ready: np.ndarray) -> np.ndarray:
        """The NF on packets in order (verdicts and rewrites in place); returns ``ready``."""
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
        self.count["processed"] += len(ready)
        return ready

    def replay(self, records: np.ndarray) -> np.ndarray:
        """A take-over's replay: exactly these packets, in this order, past the ordering unit."""
        done = self.apply_nf(records)
        ne = self.ordering.next_expected
        for f, s in zip(records["flow_id"].tolist(), records["seq"].tolist()):
            if s >= ne.get(f, 1):
                ne[f] = s + 1
        self.count["replayed"] += len(records)
        return done

    def skip_gaps(self, now_ns: int, gap_ns: int) -> None:
        if self.ordering.waiting_since:
            self.run_nf(self.ordering.skip_gaps(now_ns, gap_ns))

    def expire_idle(self, idle_ns: int) -> None:
        """Forget flows whose newest packet is older than ``idle_ns`` (packet time).

        Table and ordering state of a flow that stopped would otherwise stay for
        ever. NFs with their own expiry (the NAT's idle_timeout_s) see the rows
        go like any other removal; the removal is part of the next state clock.
        """
        rows = self.table.idle_rows(self.ctx.now_ns, idle_ns)
        if len(rows):
            flows = self.table.flow_ids[rows].tolist()
            self.table.remove(rows)
            self.ordering.forget(flows)
            self.count["expired"] += len(flows)
