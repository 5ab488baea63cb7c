"""The NF programming model: a pure class, a per-flow state table, a context.

An NF sees one batch of packet records at a time (numpy structured array, see
``deft.runtime.dataplane.packet``), in per-flow stamp order, and:

* sets ``batch["verdict"]`` (FORWARD or DROP) for every packet,
* may rewrite ``batch["frame"]`` in place (addresses, ports, checksums),
* reads and writes per-flow state only through the ``FlowTable`` it is given.

It owns no socket, no shared memory, no clock and no randomness: time and
random numbers come from the ``Context`` (derived from the packets' stamps and
ingress timestamps), so a secondary that replays the same packets from the
same state computes the same outputs. Instance-wide structures (a NAT's free
port pool) must be derivable from the flow table: ``rebuild`` recomputes them
after state has been imported on another instance.

Work on the batch with numpy; per-packet Python loops belong only on the
rare path (a flow's first packet).

Global state (shared by all instances, kept by Raft). An NF with
``uses_globals = True`` queues ops on ``ctx.globals`` in ``process`` (``incr``,
``add_to_set``, ``add_to_window``, ``compare_and_set``, ``get``; each returns
its index) and may read ``ctx.globals.local(key)`` (this node's replica, maybe
stale). The runtime then ``take()``s the ops: none, and ``process``'s verdicts
are final; else it commits them as one entry (``batch_entry``, deduplicated
per batch) and calls ``on_global_results(batch, results, table, ctx)``, whose
verdicts are final (results aligned with the ops; ``STALE`` if a replay came
too late: use ``local``). The batch is released only after that. An output
batch may hold several ``process`` calls: the runtime commits all their ops as
one entry, then calls ``on_global_results`` once per call, in order, each
with the part of the batch and the results of that call (an empty list for a
call that queued none, so its verdicts can follow what the others decided).
``deft.nfs.globals`` has the sequence (``run_batch``) and an in-process commit.

Example, a per-flow byte counter::

    class ByteCounter(NetworkFunction):
        name = "bytecounter"
        state_dtype = np.dtype([("bytes", "<u8")])
        counters = ("packets",)

        def process(self, batch, rows, new_rows, table, ctx):
            np.add.at(table.state["bytes"], rows, batch["frame_len"])
            self.stats["packets"] += len(batch)
            return np.zeros(len(batch), np.uint8)          # all FORWARD
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from deft.runtime.dataplane.stamper import bucket_of

from deft.runtime.params import Params, int_to_ipv4, ipv4_to_int  # re-exported for NF authors

__all__ = ["STALE", "Context", "FlowTable", "GlobalOps", "NetworkFunction", "Params", "int_to_ipv4",
           "ipv4_to_int"]

#: The result of a global op whose entry was superseded (``deft.runtime.consensus.kv.STALE``).
STALE = "__stale__"

GlobalOp = tuple[str, str, tuple[Any, ...]]   # (op, key, args), as ``batch_entry`` takes them


class GlobalOps:
    """One batch's global operations, queued by the NF and taken by the runtime.

    Every queuing method returns the op's index in the list that ``take`` returns
    and that ``on_global_results`` gets the results of. Values must be
    JSON-serialisable. ``replica`` is a read-only view of this node's applied
    global state, set by the runtime (empty without a cluster).
    """

    def __init__(self, replica: Mapping[str, Any] | None = None):
        self.replica: Mapping[str, Any] = MappingProxyType({}) if replica is None else replica
        self._ops: list[GlobalOp] = []

    MAX_PENDING: ClassVar[int] = 1 << 16

    def _queue(self, op: str, key: str, *args: Any) -> int:
        if not isinstance(key, str):
            raise TypeError(f"global key must be a string, got {key!r}")
        if len(self._ops) >= self.MAX_PENDING:   # a runtime that never takes them: fail, do not grow
            raise RuntimeError(f"{len(self._ops)} global ops pending: the runtime must take() them "
                               "after every process()")
        self._ops.append((op, key, args))
        return len(self._ops) - 1

    def incr(self, key: str, n: int = 1) -> int:
        """Result: the new value."""
        return self._queue("incr", key, int(n))

    def add_to_set(self, key: str, member: Any) -> int:
        """Result: True if ``member`` was not in the set."""
        return self._queue("add_to_set", key, member)

    def add_to_window(self, key: str, member: str, now_ns: int, window_ns: int) -> int:
        """Result: the set's size after adding ``member`` at ``now_ns`` and forgetting
        members last seen before ``now_ns - window_ns``. Stored as ``{member: last_ns}``."""
        return self._queue("add_to_window", key, str(member), int(now_ns), int(window_ns))

    def compare_and_set(self, key: str, expected: Any, new: Any) -> int:
        """Result: True if the value was ``expected`` (and is now ``new``)."""
        return self._queue("compare_and_set", key, expected, new)

    def get(self, key: str) -> int:
        """Result: the value, linearizable (read in log order with the batch's other ops)."""
        return self._queue("get", key)

    def local(self, key: str, default: Any = None) -> Any:
        """This node's applied value now, without waiting (may be stale)."""
        return self.replica.get(key, default)

    def take(self) -> list[GlobalOp]:
        """The ops queued since the last call (runtime only)."""
        ops, self._ops = self._ops, []
        return ops

    def __len__(self) -> int:
        return len(self._ops)


class Context:
    """What an NF may know beyond its packets and its state.

    ``now_ns`` is the newest ingress timestamp of the batch being processed:
    time moves with the packets, so a replay on another instance sees the same
    clock. ``random_u32`` hashes stamps (or any integer keys) with the
    instance's seed: deterministic, and the same on primary and secondary.
    ``globals`` collects the batch's global operations (``GlobalOps``).
    """

    def __init__(self, instance_index: int = 0, instance_count: int = 1, seed: int = 0,
                 global_ops: GlobalOps | None = None):
        self.instance_index = instance_index
        self.instance_count = instance_count
        self.seed = seed
        self.now_ns = 0
        self.globals = GlobalOps() if global_ops is None else global_ops

    def random_u32(self, keys: np.ndarray) -> np.ndarray:
        """Deterministic pseudo-random uint32 per key (splitmix64 finaliser)."""
        with np.errstate(over="ignore"):
            z = keys.astype(np.uint64) + np.uint64((self.seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return (z & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class FlowTable:
    """Per-flow state of one NF instance: a row per flow in a numpy structured array.

    ``rows_for(flow_ids)`` maps a batch's flow ids to row numbers, creating rows
    (zeroed state) for flows not seen before. The table remembers which flows
    changed since ``take_changes()`` was last called: every row handed out by
    ``rows_for`` and every row passed to ``mark_changed`` counts as changed,
    and removed flows are reported separately. That is exactly what a state
    clock needs to carry to a secondary.
    """

    def __init__(self, state_dtype: np.dtype, capacity: int = 1024):
        self.state_dtype = np.dtype(state_dtype)
        self.state = np.zeros(capacity, dtype=self.state_dtype)
        self.flow_ids = np.zeros(capacity, dtype=np.uint64)
        self.live = np.zeros(capacity, dtype=bool)
        self.last_ns = np.zeros(capacity, dtype=np.uint64)  # newest packet timestamp per flow (runtime-kept)
        self.key_hash = np.zeros(capacity, dtype=np.uint32)  # the flow's 5-tuple hash: its bucket (runtime-kept)
        self._changed: set[int] = set()   # rows changed since take_changes: a set, so a batch costs what it touched, not the table's size
        self._removed: list[int] = []
        self._index: dict[int, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, flow_id: int) -> bool:
        return int(flow_id) in self._index

    def row_of(self, flow_id: int) -> int:
        """Row of one flow, or -1."""
        return self._index.get(int(flow_id), -1)

    def rows_for(self, flow_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows for a batch of flow ids, and the rows created by this call (unique, ascending)."""
        get = self._index.get
        ids = flow_ids.tolist()
        rows = [get(f, -1) for f in ids]
        new_rows: list[int] = []
        if -1 in rows:
            for i, f in enumerate(ids):
                if rows[i] == -1:
                    row = get(f, -1)
                    if row == -1:
                        row = self._insert(f)
                        new_rows.append(row)
                    rows[i] = row
        self._changed.update(rows)
        return np.array(rows, dtype=np.int64), np.array(sorted(new_rows), dtype=np.int64)

    def _insert(self, flow_id: int) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._index[flow_id] = row
        self.flow_ids[row] = flow_id
        self.live[row] = True
        self.state[row] = np.zeros((), dtype=self.state_dtype)
        return row

    def _grow(self) -> None:
        old = len(self.state)
        new = old * 2
        for name in ("state", "flow_ids", "live", "last_ns", "key_hash"):
            arr = getattr(self, name)
            grown = np.zeros(new, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self._free.extend(range(new - 1, old - 1, -1))

    def mark_changed(self, rows: np.ndarray) -> None:
        self._changed.update(np.asarray(rows, dtype=np.int64).tolist())

    def idle_rows(self, now_ns: int, idle_ns: int) -> np.ndarray:
        """Live rows whose newest packet is older than ``idle_ns`` at ``now_ns`` (packet time)."""
        if now_ns <= idle_ns:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.live & (self.last_ns < np.uint64(now_ns - idle_ns)))

    def remove(self, rows: np.ndarray) -> None:
        """Forget flows (their state is zeroed and their rows reused)."""
        for row in np.unique(rows).tolist():
            if not self.live[row]:
                continue
            flow_id = int(self.flow_ids[row])
            del self._index[flow_id]
            self.live[row] = False
            self._changed.discard(row)
            self.state[row] = np.zeros((), dtype=self.state_dtype)
            self._removed.append(flow_id)
            self._free.append(row)

    def take_changes(self) -> tuple[np.ndarray, np.ndarray]:
        """(changed flows as export records, removed flow ids) since the last call."""
        rows = np.fromiter(self._changed, dtype=np.int64, count=len(self._changed))
        rows.sort()
        rows = rows[self.live[rows]]
        self._changed = set()
        removed = np.array(self._removed, dtype=np.uint64)
        self._removed = []
        return self.export_rows(rows), removed

    def export_dtype(self) -> np.dtype:
        # last_ns travels with the state: a replica that takes over must not think every flow idle;
        # key_hash too: a pair that moves buckets to another (controller/bucketmove.py) picks its flows by it
        return np.dtype([("flow_id", "<u8"), ("last_ns", "<u8"), ("key_hash", "<u4"), ("state", self.state_dtype)])

    def export_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=self.export_dtype())
        out["flow_id"] = self.flow_ids[rows]
        out["last_ns"] = self.last_ns[rows]
        out["key_hash"] = self.key_hash[rows]
        out["state"] = self.state[rows]
        return out

    def export_flows(self, flow_ids: np.ndarray) -> np.ndarray:
        rows = np.array([self._index[int(f)] for f in flow_ids.tolist() if int(f) in self._index], dtype=np.int64)
        return self.export_rows(rows)

    def import_records(self, records: np.ndarray, removed: np.ndarray | None = None) -> None:
        """Apply exported records (insert or overwrite) and removals, as a secondary does."""
        if removed is not None and len(removed):
            rows = [self._index[int(f)] for f in removed.tolist() if int(f) in self._index]
            self.remove(np.array(rows, dtype=np.int64))
            self._removed = []
        if len(records):
            rows, _ = self.rows_for(records["flow_id"])
            self.state[rows] = records["state"]
            if "last_ns" in records.dtype.names:
                self.last_ns[rows] = records["last_ns"]
            if "key_hash" in records.dtype.names:
                self.key_hash[rows] = records["key_hash"]
            self._changed.difference_update(rows.tolist())

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def rows_in_buckets(self, buckets: np.ndarray) -> np.ndarray:
        """Live rows whose flow falls in ``buckets`` (a bool mask over all the buckets)."""
        live = self.live_rows()
        return live[buckets[bucket_of(self.key_hash[live], len(buckets))]]


class NetworkFunction:
    """Base class of every NF; subclasses set the class attributes and ``process``.

    Class attributes:
      name          the ``[nf] kind`` that selects this NF
      state_dtype   numpy dtype of one flow's state (replicated as is)
      counters      names of the NF's own counters (drops by reason, translations...)
      uses_globals  queues global ops in ``process``; implements ``on_global_results``
    """

    name: ClassVar[str] = ""
    state_dtype: ClassVar[np.dtype] = np.dtype([("unused", "u1")])
    counters: ClassVar[tuple[str, ...]] = ()
    uses_globals: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: Context):
        self.ctx = ctx
        self.stats: dict[str, int] = dict.fromkeys(self.counters, 0)

    def new_table(self, capacity: int = 1024) -> FlowTable:
        return FlowTable(self.state_dtype, capacity)

    def process(
        self,
        batch: np.ndarray,
        rows: np.ndarray,
        new_rows: np.ndarray,
        table: FlowTable,
        ctx: Context,
    ) -> np.ndarray:
        """Process a batch in per-flow stamp order; return the verdict per packet (uint8).

        batch     packet records, writable; rewrite frames in place
        rows      the flow table row of each packet
        new_rows  rows created for this batch (flows seen for the first time)
        """
        raise NotImplementedError

    def on_global_results(self, batch: np.ndarray, results: list[Any], table: FlowTable,
                          ctx: Context) -> np.ndarray:
        """The batch's final verdicts once its global ops are committed (``uses_globals`` NFs).

        results   one per op queued by this batch's ``process``, in queuing order
                  (``STALE`` for each if a replayed batch's entry was superseded)
        """
        raise NotImplementedError

    def movable(self, table: FlowTable, rows: np.ndarray) -> np.ndarray:
        """Of ``rows`` (a bucket move's flows), those that go with their buckets (all, unless the NF
        keeps rows of its own that are not flows: the NAT's lent and owned ports)."""
        return rows

    def moved_out(self, table: FlowTable, rows: np.ndarray) -> None:
        """The flows in ``rows`` moved to another pair with their state (a bucket move): forget them.

        An NF whose flows hold something instance-wide that goes with them (the NAT's public
        ports) overrides this to keep track of it."""
        table.remove(rows)

    def moved_in(self, table: FlowTable, rows: np.ndarray) -> None:
        """Flows came in ``rows`` with their state (a bucket move's import)."""
        self.rebuild(table)

    def rebuild(self, table: FlowTable) -> None:
        """Recompute instance-wide structures from the table (after a state import)."""
