"""Stamping unit core (paper IV-A): flow ids and per-flow counters, vectorised, crash-safe.

Each unit owns a disjoint slice of the flow id space: ids of unit ``u`` are
``(u + 1) << 40 | k`` for k = 1, 2, ... so two units never hand out the same
id. Per flow, ``seq`` counts packets from 1.

The flow key is the symmetric 5-tuple (both directions are one flow), packed
into 16 bytes so one dict lookup per packet finds the flow's slot; seq
assignment for several packets of a flow in one batch is column arithmetic.

State lives in a ``StamperTable``: numpy arrays that the supervisor can place
in shared memory, so a unit that is killed and started again continues every
flow with the same id and the next seq (the standby takes over, G5 for the
stamp). Each batch is journalled: before a slot changes its old row goes to
an undo log and an intent record names the batch; ``commit`` clears the
intent once the batch has been handed on and released from the unit's ring.
``recover`` after a crash rolls an unfinished batch back, so the batch is
stamped again with exactly the same stamps; copies the dead unit had already
handed on are then duplicates by stamp, which the NF's ordering unit drops.

Pure: no clock (idle expiry takes ``now_ns``), no I/O.
"""

from __future__ import annotations

import struct

import numpy as np

from deft.runtime.dataplane.packet import FEW, RECORD_SIZE
from deft.runtime.errors import DeftError

UNIT_SHIFT = 40
SMALL_BATCH = FEW  # up to this many packets, a Python loop beats the fixed cost of the numpy path
MAX_BATCH = 256  # the journal holds the undo rows of one batch of at most this many packets

SLOT_DTYPE = np.dtype([("k0", "<u8"), ("k1", "<u8"), ("flow_id", "<u8"), ("last_seq", "<u8"), ("last_ts", "<u8")])
UNDO_DTYPE = np.dtype([("slot", "<i8"), ("row", SLOT_DTYPE)])
# header words
H_MAGIC, H_CAPACITY, H_USED, H_NEXT_LOCAL, H_INTENT, H_HEAD, H_UNDO_N, H_UNDO_USED, H_UNDO_NEXT = range(9)
HEADER_WORDS = 16
MAGIC = 0xDEF7_57A3


class StamperTableFull(DeftError):
    """No free slot for a new flow (after expiring idle ones)."""


class StamperTable:
    """The arrays a Stamper works on: header words, one slot per flow, the undo journal.

    ``StamperTable.in_memory(capacity)`` for tests; ``StamperTable.over(buffer)``
    to view a shared-memory segment of ``StamperTable.nbytes(capacity)`` bytes.
    """

    def __init__(self, buffer, capacity: int, fresh: bool):
        self.header = np.ndarray((HEADER_WORDS,), dtype=np.uint64, buffer=buffer)
        self.slots = np.ndarray((capacity,), dtype=SLOT_DTYPE, buffer=buffer, offset=8 * HEADER_WORDS)
        self.undo = np.ndarray((2 * MAX_BATCH,), dtype=UNDO_DTYPE, buffer=buffer,
                               offset=8 * HEADER_WORDS + SLOT_DTYPE.itemsize * capacity)
        if fresh:
            self.header[:] = 0
            self.header[H_CAPACITY] = capacity
            self.header[H_NEXT_LOCAL] = 1
            self.header[H_MAGIC] = MAGIC
        elif int(self.header[H_MAGIC]) != MAGIC or int(self.header[H_CAPACITY]) != capacity:
            raise DeftError("stamper table: bad magic or capacity (made by another version?)")

    @staticmethod
    def nbytes(capacity: int) -> int:
        return 8 * HEADER_WORDS + SLOT_DTYPE.itemsize * capacity + UNDO_DTYPE.itemsize * 2 * MAX_BATCH

    @classmethod
    def in_memory(cls, capacity: int) -> "StamperTable":
        return cls(bytearray(cls.nbytes(capacity)), capacity, fresh=True)

    @classmethod
    def over(cls, buffer, capacity: int, fresh: bool) -> "StamperTable":
        return cls(buffer, capacity, fresh)


_KEY = struct.Struct("<QQ")
_FIELDS = struct.Struct("<IIHH")  # src_ip, dst_ip, src_port, dst_port at offset 32 of a record


def flow_keys(batch: np.ndarray) -> list[bytes]:
    """16-byte symmetric 5-tuple keys for a batch of records: <u8 (low endpoint << 8 | proto), <u8 high endpoint."""
    if len(batch) <= SMALL_BATCH and batch.flags.c_contiguous and batch.dtype.itemsize == RECORD_SIZE:
        return _flow_keys_few(batch)
    a = (batch["src_ip"].astype(np.uint64) << np.uint64(16)) | batch["src_port"]
    b = (batch["dst_ip"].astype(np.uint64) << np.uint64(16)) | batch["dst_port"]
    pair = np.empty((len(batch), 2), dtype=np.uint64)
    pair[:, 0] = (np.minimum(a, b) << np.uint64(8)) | batch["proto"]
    pair[:, 1] = np.maximum(a, b)
    return pair.view("V16").ravel().tolist()


def _flow_keys_few(batch: np.ndarray) -> list[bytes]:
    """``flow_keys`` read straight from the record bytes: no numpy fixed cost for a few packets."""
    raw = memoryview(batch.view(np.uint8))
    keys = []
    for i in range(len(batch)):
        at = i * RECORD_SIZE
        src, dst, sport, dport = _FIELDS.unpack_from(raw, at + 32)
        a, b = (src << 16) | sport, (dst << 16) | dport
        lo, hi = (a, b) if a <= b else (b, a)
        keys.append(_KEY.pack((lo << 8) | raw[at + 48], hi))
    return keys


class Stamper:
    """Assigns (flow_id, seq) stamps; one per stamping unit, over a StamperTable."""

    def __init__(self, unit_index: int, capacity: int = 4096, table: StamperTable | None = None):
        self.unit_index = unit_index
        self._base = (unit_index + 1) << UNIT_SHIFT
        self.table = table or StamperTable.in_memory(capacity)
        self.capacity = len(self.table.slots)
        self.new_flows = 0
        self.table_full = 0
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        """The key -> slot dict and the free list, from the table (after attach or recovery)."""
        slots = self.table.slots
        used = int(self.table.header[H_USED])
        live = np.flatnonzero(slots["flow_id"][:used] != 0)
        pairs = np.empty((len(live), 2), dtype=np.uint64)
        pairs[:, 0] = slots["k0"][live]
        pairs[:, 1] = slots["k1"][live]
        self._slot_of: dict[bytes, int] = dict(zip(pairs.view("V16").ravel().tolist(), live.tolist()))
        self._free = sorted(set(range(used)) - set(live.tolist()), reverse=True)

    def __len__(self) -> int:
        return len(self._slot_of)

    # -- journal ---------------------------------------------------------------
    def _journal(self, slots, ring_head: int) -> None:
        """Save the old rows of ``slots`` and the header, then open the intent; nothing changed yet."""
        t = self.table
        n = len(slots)
        if n > len(t.undo):
            raise DeftError(f"stamper: a batch touches {n} slots, the journal holds {len(t.undo)}")
        t.undo["slot"][:n] = slots
        t.undo["row"][:n] = t.slots[slots]
        h = t.header
        h[H_UNDO_N], h[H_UNDO_USED], h[H_UNDO_NEXT], h[H_HEAD] = n, h[H_USED], h[H_NEXT_LOCAL], ring_head
        h[H_INTENT] = 1  # last: the journal is complete before the intent is visible

    def commit(self) -> None:
        """The batch has been handed on and released from the unit's ring: forget its undo rows."""
        self.table.header[H_INTENT] = 0

    def recover(self, ring_head: int, intent_head: int | None = None) -> str:
        """After a crash: roll back a batch that was not released, keep one that was.

        ``ring_head`` is the unit ring's head now; the intent recorded the head
        when the batch began. A moved head means the release happened (the
        batch is complete); otherwise every change of the batch is undone, so
        stamping it again gives the same stamps.
        """
        h = self.table.header
        if not int(h[H_INTENT]):
            return "clean"
        began = int(h[H_HEAD]) if intent_head is None else intent_head
        if ring_head != began:
            h[H_INTENT] = 0
            return "kept"
        n = int(h[H_UNDO_N])
        undo = self.table.undo[:n]
        self.table.slots[undo["slot"]] = undo["row"]
        h[H_USED], h[H_NEXT_LOCAL] = h[H_UNDO_USED], h[H_UNDO_NEXT]
        h[H_INTENT] = 0
        self._rebuild_index()
        return "rolled back"

    # -- stamping ---------------------------------------------------------------
    def stamp(self, batch: np.ndarray, ring_head: int = 0) -> np.ndarray:
        """Write flow_id and seq into every record of ``batch``, in arrival order.

        Returns a mask of the packets stamped: all of them, unless the table is
        full and a new flow found no slot (those are left unstamped, counted
        in ``table_full``, and must be dropped by the caller).
        """
        n = len(batch)
        if n == 0:
            return np.ones(0, dtype=bool)
        get = self._slot_of.get
        keys = flow_keys(batch)
        slots_list = [get(k, -1) for k in keys]
        new_keys: dict[bytes, int] = {}
        used = int(self.table.header[H_USED])
        if -1 in slots_list:
            for i, k in enumerate(keys):
                if slots_list[i] == -1 and k not in new_keys:
                    new_keys[k], used = self._take_slot(used)
            for i, k in enumerate(keys):
                if slots_list[i] == -1:
                    slots_list[i] = new_keys[k]
        if -2 in new_keys.values():  # table full: stamp the packets that have a slot, leave the rest
            ok = np.array([s >= 0 for s in slots_list], dtype=bool)
            stamped = batch[ok]
            self._assign([s for s in slots_list if s >= 0], stamped, new_keys, used, ring_head)
            batch[ok] = stamped
            return ok
        self._assign(slots_list, batch, new_keys, used, ring_head)
        return np.ones(n, dtype=bool)

    def _begin(self, touched, new_keys: dict[bytes, int], used: int, ring_head: int) -> None:
        """Journal the touched slots, then make the batch's new flows (nothing changes before the journal)."""
        self._journal(touched, ring_head)
        self.table.header[H_USED] = used
        for k, slot in new_keys.items():
            if slot >= 0:
                self._fill_slot(slot, k)

    def _assign(self, slots_list: list[int], batch: np.ndarray, new_keys: dict[bytes, int], used: int,
                ring_head: int) -> None:
        n = len(slots_list)
        if n <= SMALL_BATCH:
            self._begin(sorted(set(slots_list)), new_keys, used, ring_head)
            if n:
                self._stamp_few(batch, slots_list)
            return
        slots = np.array(slots_list, dtype=np.int64)
        table = self.table.slots
        # seq = last seq of the flow + rank of the packet among the flow's packets in this batch
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        boundary = np.empty(n, dtype=bool)
        boundary[0] = True
        np.not_equal(sorted_slots[1:], sorted_slots[:-1], out=boundary[1:])
        starts = np.flatnonzero(boundary)
        self._begin(sorted_slots[starts], new_keys, used, ring_head)  # the unique slots, sorted
        counts = np.empty_like(starts)
        counts[:-1] = starts[1:] - starts[:-1]
        counts[-1] = n - starts[-1]
        rank = np.arange(n) - np.repeat(starts, counts)
        seq = np.empty(n, dtype=np.uint64)
        seq[order] = table["last_seq"][sorted_slots] + rank.astype(np.uint64) + np.uint64(1)
        batch["seq"] = seq
        batch["flow_id"] = table["flow_id"][slots]
        uniq = sorted_slots[starts]
        table["last_seq"][uniq] += counts.astype(np.uint64)
        table["last_ts"][slots] = batch["ts_ns"]

    def _stamp_few(self, batch: np.ndarray, slots: list[int]) -> None:
        """The same stamps as the vectorised path, per packet: cheaper for a handful of packets."""
        last_seq, last_ts, flow_id = self.table.slots["last_seq"], self.table.slots["last_ts"], self.table.slots["flow_id"]
        seqs, ids = [], []
        for slot, ts in zip(slots, batch["ts_ns"].tolist()):
            seq = int(last_seq[slot]) + 1
            last_seq[slot] = seq
            last_ts[slot] = ts
            seqs.append(seq)
            ids.append(int(flow_id[slot]))
        batch["seq"] = seqs
        batch["flow_id"] = ids

    def _take_slot(self, used: int) -> tuple[int, int]:
        """(slot for a new flow or -2 when the table is full, slots in use after it)."""
        if self._free:
            return self._free.pop(), used
        if used == self.capacity:
            self.table_full += 1
            return -2, used
        return used, used + 1

    def _fill_slot(self, slot: int, key: bytes) -> None:
        k0, k1 = _KEY.unpack(key)
        h = self.table.header
        local = int(h[H_NEXT_LOCAL])
        h[H_NEXT_LOCAL] = local + 1
        self.table.slots[slot] = (k0, k1, self._base | local, 0, 0)
        self._slot_of[key] = slot
        self.new_flows += 1

    def expire(self, now_ns: int, idle_ns: int) -> int:
        """Forget flows idle longer than ``idle_ns``; a returning flow gets a new id.

        A slot is empty when its flow_id is 0, and that one store is the whole
        removal, so a crash in the middle of expiry leaves no half-flow.
        """
        slots = self.table.slots
        used = int(self.table.header[H_USED])
        idle = np.flatnonzero((slots["flow_id"][:used] != 0)
                              & (slots["last_ts"][:used] + np.uint64(idle_ns) < np.uint64(now_ns)))
        if not len(idle):
            return 0
        pairs = np.empty((len(idle), 2), dtype=np.uint64)
        pairs[:, 0] = slots["k0"][idle]
        pairs[:, 1] = slots["k1"][idle]
        slots["flow_id"][idle] = 0
        for key, slot in zip(pairs.view("V16").ravel().tolist(), idle.tolist()):
            self._slot_of.pop(key, None)
            self._free.append(slot)
        return len(idle)


def unit_of(key_hash: np.ndarray, n_units: int) -> np.ndarray:
    """Which stamping unit handles each packet (the stamper manager's hash step)."""
    return (key_hash >> np.uint32(16)) % np.uint32(n_units)


def bucket_of(key_hash: np.ndarray, n_buckets: int) -> np.ndarray:
    return key_hash % np.uint32(n_buckets)
