"""Stamping unit core (paper IV-A): flow ids and per-flow counters, vectorised.

Each unit owns a disjoint slice of the flow id space: ids of unit ``u`` are
``(u + 1) << 40 | k`` for k = 1, 2, ... so two units never hand out the same
id, and a standby that takes over unit ``u`` keeps using its slice. Per flow,
``seq`` counts packets from 1.

The flow key is the symmetric 5-tuple (both directions are one flow), packed
into 16 bytes so one dict lookup per packet finds the flow; everything else
(seq assignment for several packets of a flow in one batch, bucket lookup) is
column arithmetic.

Pure: no clock (idle expiry takes ``now_ns``), no I/O.
"""

from __future__ import annotations

import struct

import numpy as np

from deft.runtime.dataplane.packet import RECORD_SIZE

UNIT_SHIFT = 40
SMALL_BATCH = 4  # up to this many packets, a Python loop beats the fixed cost of the numpy path


_KEY = struct.Struct("<QQ")
_FIELDS = struct.Struct("<IIHH")  # src_ip, dst_ip, src_port, dst_port at offset 32 of a record


def flow_keys(batch: np.ndarray) -> list[bytes]:
    """16-byte symmetric 5-tuple keys for a batch of records."""
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
    """Assigns (flow_id, seq) stamps; one instance per stamping unit."""

    def __init__(self, unit_index: int, capacity: int = 4096):
        self.unit_index = unit_index
        self._base = (unit_index + 1) << UNIT_SHIFT
        self._slot_of: dict[bytes, int] = {}
        self._free: list[int] = []
        self.flow_id = np.zeros(capacity, dtype=np.uint64)
        self.last_seq = np.zeros(capacity, dtype=np.uint64)
        self.last_ts = np.zeros(capacity, dtype=np.uint64)
        self.keys: list[bytes | None] = [None] * capacity
        self._next_local = 1
        self._used = 0
        self.new_flows = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def _grow(self) -> None:
        old = len(self.flow_id)
        for name in ("flow_id", "last_seq", "last_ts"):
            arr = getattr(self, name)
            grown = np.zeros(old * 2, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self.keys.extend([None] * old)

    def _new_slot(self, key: bytes) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == len(self.flow_id):
                self._grow()
            slot = self._used
            self._used += 1
        self._slot_of[key] = slot
        self.keys[slot] = key
        self.flow_id[slot] = self._base | self._next_local
        self._next_local += 1
        self.last_seq[slot] = 0
        self.new_flows += 1
        return slot

    def stamp(self, batch: np.ndarray) -> None:
        """Write flow_id and seq into every record of ``batch``, in arrival order."""
        n = len(batch)
        if n == 0:
            return
        get = self._slot_of.get
        keys = flow_keys(batch)
        slots_list = [get(k, -1) for k in keys]
        if -1 in slots_list:
            for i, k in enumerate(keys):
                if slots_list[i] == -1:
                    s = get(k, -1)
                    slots_list[i] = s if s != -1 else self._new_slot(k)
        if n <= SMALL_BATCH:
            self._stamp_few(batch, slots_list)
            return
        slots = np.array(slots_list, dtype=np.int64)
        # seq = last seq of the flow + rank of the packet among the flow's packets in this batch
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        boundary = np.empty(n, dtype=bool)
        boundary[0] = True
        np.not_equal(sorted_slots[1:], sorted_slots[:-1], out=boundary[1:])
        starts = np.flatnonzero(boundary)
        counts = np.diff(starts, append=n)
        rank = np.arange(n) - np.repeat(starts, counts)
        seq = np.empty(n, dtype=np.uint64)
        seq[order] = self.last_seq[sorted_slots] + rank.astype(np.uint64) + np.uint64(1)
        batch["seq"] = seq
        batch["flow_id"] = self.flow_id[slots]
        uniq = sorted_slots[starts]
        self.last_seq[uniq] += counts.astype(np.uint64)
        self.last_ts[slots] = batch["ts_ns"]

    def _stamp_few(self, batch: np.ndarray, slots: list[int]) -> None:
        """The same stamps as the vectorised path, per packet: cheaper for a handful of packets."""
        last_seq, last_ts, flow_id = self.last_seq, self.last_ts, self.flow_id
        seqs, ids = [], []
        for slot, ts in zip(slots, batch["ts_ns"].tolist()):
            seq = int(last_seq[slot]) + 1
            last_seq[slot] = seq
            last_ts[slot] = ts
            seqs.append(seq)
            ids.append(int(flow_id[slot]))
        batch["seq"] = seqs
        batch["flow_id"] = ids

    def expire(self, now_ns: int, idle_ns: int) -> int:
        """Forget flows idle longer than ``idle_ns``; a returning flow gets a new id."""
        live = np.flatnonzero(self.last_ts[: self._used] + np.uint64(idle_ns) < np.uint64(now_ns))
        count = 0
        for slot in live.tolist():
            key = self.keys[slot]
            if key is None:
                continue
            del self._slot_of[key]
            self.keys[slot] = None
            self.last_ts[slot] = np.iinfo(np.uint64).max // 2  # not expired twice
            self._free.append(slot)
            count += 1
        return count


def unit_of(key_hash: np.ndarray, n_units: int) -> np.ndarray:
    """Which stamping unit handles each packet (the stamper manager's hash step)."""
    return (key_hash >> np.uint32(16)) % np.uint32(n_units)


def bucket_of(key_hash: np.ndarray, n_buckets: int) -> np.ndarray:
    return key_hash % np.uint32(n_buckets)
