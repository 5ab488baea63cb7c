"""Wire-independent replication messages between a primary P and its secondary S.

Every message carries ``(epoch, pair)``: ``pair`` names the NF instance
slot, ``epoch`` the current (primary, secondary) incarnation of that slot;
the controller raises it at every failover or resync. A receiver refuses
anything from another epoch or pair (a late message from a dead peer).

Stamps are numpy arrays of ``STAMP_DTYPE`` (flow_id, seq), in the primary's
processing order. Messages are frozen dataclasses (those holding arrays
compare by identity, ``eq=False``: an array has no single truth value); encoding for a socket is
the driver's business. ``check_message`` is the one validation function: it
returns a reason for anything a garbled or hostile peer could send, so the
cores can refuse it instead of crashing on it.

P -> S: Prepare, Sync, Commit, Packets.   S -> P: Vote, NeedFrom, Missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STAMP_DTYPE = np.dtype([("flow_id", "<u8"), ("seq", "<u8")])
_U8 = np.dtype("<u8")
_SMALL = 32   # arrays up to this long are checked in plain Python (see _stamps_reason)


def make_stamps(flow_ids: Any, seqs: Any) -> np.ndarray:
    """A STAMP_DTYPE array from two equally long integer sequences."""
    f = np.asarray(flow_ids, dtype=np.uint64)
    s = np.asarray(seqs, dtype=np.uint64)
    if f.shape != s.shape or f.ndim != 1:
        raise ValueError(f"make_stamps: flow_ids {f.shape} and seqs {s.shape} must be 1-D and equally long")
    out = np.empty(len(f), dtype=STAMP_DTYPE)
    out["flow_id"] = f
    out["seq"] = s
    return out


def stamps_of(records: np.ndarray) -> np.ndarray:
    """The stamps of packet records (any structured array with flow_id and seq), copied."""
    return make_stamps(records["flow_id"], records["seq"])


def stamp_keys(stamps: np.ndarray) -> list[tuple[int, int]]:
    """Stamps as (flow_id, seq) tuples: the keys of a secondary's packet buffer."""
    return list(zip(stamps["flow_id"].tolist(), stamps["seq"].tolist()))


@dataclass(frozen=True, slots=True, eq=False)
class Delta:
    """The state clock of one batch: what it changed, and where its flows' seqs now stand.

    records   changed flows, as ``FlowTable.export_rows`` (fields flow_id, state)
    removed   flow ids the batch removed (uint64)
    ne_flows, ne_next  ``nextExpectedPktID`` of every flow the batch touched
    """

    records: np.ndarray
    removed: np.ndarray
    ne_flows: np.ndarray
    ne_next: np.ndarray

    @classmethod
    def capture(cls, table: Any, next_expected: dict[int, int], stamps: np.ndarray) -> Delta:
        """Take a FlowTable's changes since the last capture, plus next_expected of the batch's flows."""
        records, removed = table.take_changes()
        ids = stamps["flow_id"].tolist()
        flows = sorted(set(ids))
        nxt = np.array([next_expected[f] for f in flows], dtype=np.uint64)
        return cls(records, np.asarray(removed, dtype=np.uint64), np.array(flows, dtype=np.uint64), nxt)


@dataclass(frozen=True, slots=True, eq=False)
class Prepare:
    """Phase 1 for batch ``batch``: stage ``delta``, vote when every stamp is buffered.

    ``committed_upto`` piggy-backs P's latest decision (0: none), so a lost
    Commit is repaired by the next Prepare.
    """

    epoch: int
    pair: int
    batch: int
    stamps: np.ndarray
    delta: Delta
    committed_upto: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Sync:
    """Phase 1 of a full sync to a new secondary; batch ``batch`` of the stream, without packets.

    records   the primary's whole FlowTable (export records) after batch ``batch - 1``
    ne_flows, ne_next  its whole ``nextExpectedPktID``
    stamps    packets the primary holds but has not processed yet (the new
              secondary buffers them: it never got their duplicates)
    payloads  the driver's copies of those packets, aligned with ``stamps`` (opaque here)
    """

    epoch: int
    pair: int
    batch: int
    records: np.ndarray
    ne_flows: np.ndarray
    ne_next: np.ndarray
    stamps: np.ndarray
    payloads: tuple | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """Phase 2: every batch <= ``upto`` is decided (cumulative, so idempotent and loss tolerant)."""

    epoch: int
    pair: int
    upto: int


@dataclass(frozen=True, slots=True, eq=False)
class Packets:
    """Packets of batch ``batch`` that the secondary reported missing; the driver fills ``payloads``."""

    epoch: int
    pair: int
    batch: int
    stamps: np.ndarray
    payloads: tuple | None = None


@dataclass(frozen=True, slots=True)
class Vote:
    """S has staged every batch <= ``batch`` (cumulative) and applied every batch <= ``committed``.

    Sent for each newly staged prefix, again for a duplicate Prepare, and as
    the acknowledgement of a Commit.
    """

    epoch: int
    pair: int
    batch: int
    committed: int


@dataclass(frozen=True, slots=True)
class NeedFrom:
    """S received a Prepare past a gap: please retransmit from ``batch`` on."""

    epoch: int
    pair: int
    batch: int


@dataclass(frozen=True, slots=True, eq=False)
class Missing:
    """S has Prepare ``batch`` but not these of its packets (the duplicate never came)."""

    epoch: int
    pair: int
    batch: int
    stamps: np.ndarray


Message = Prepare | Sync | Commit | Packets | Vote | NeedFrom | Missing
MESSAGE_TYPES = (Prepare, Sync, Commit, Packets, Vote, NeedFrom, Missing)


def _is_count(value: Any, minimum: int = 0) -> bool:
    # bool is an int subclass and numpy ints are not ints: accept exactly int.
    return type(value) is int and value >= minimum


def _u8_vector(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == _U8


def _stamps_reason(stamps: Any, unique: bool = True) -> str | None:
    if not (isinstance(stamps, np.ndarray) and stamps.ndim == 1 and stamps.dtype == STAMP_DTYPE):
        return "stamps are not a 1-D STAMP_DTYPE array"
    n = len(stamps)
    if n <= _SMALL:   # a few stamps (a light load's batch): plain Python beats numpy's fixed costs
        pairs = stamps.tolist()
        if any(seq == 0 for _, seq in pairs):
            return "stamp with seq 0 (seqs start at 1)"
        if unique and len(set(pairs)) != n:
            return "repeated stamp"
        return None
    if not stamps["seq"].all():
        return "stamp with seq 0 (seqs start at 1)"
    if unique:
        flows, seqs = stamps["flow_id"], stamps["seq"]
        order = np.lexsort((seqs, flows))   # sorted by (flow, seq): a repeat sits beside its twin
        f, q = flows[order], seqs[order]
        if ((f[1:] == f[:-1]) & (q[1:] == q[:-1])).any():
            return "repeated stamp"
    return None


def _records_reason(records: Any, export_dtype: np.dtype | None) -> str | None:
    if not (isinstance(records, np.ndarray) and records.ndim == 1 and records.dtype.names):
        return "records are not a 1-D structured array"
    if export_dtype is not None and records.dtype != export_dtype:
        return "records do not have this NF's export dtype"
    if "flow_id" not in records.dtype.names:
        return "records have no flow_id"
    return None


def _ne_reason(flows: Any, nxt: Any) -> str | None:
    if not (_u8_vector(flows) and _u8_vector(nxt) and len(flows) == len(nxt)):
        return "next_expected is not two equally long uint64 vectors"
    if (0 in nxt.tolist()) if len(nxt) <= _SMALL else bool((nxt == 0).any()):
        return "next_expected of 0 (seqs start at 1)"
    return None


def _payloads_reason(payloads: Any, stamps: np.ndarray) -> str | None:
    if payloads is not None and (not isinstance(payloads, tuple) or len(payloads) != len(stamps)):
        return "payloads do not match stamps"
    return None


def check_message(msg: Any, export_dtype: np.dtype | None = None) -> str | None:
    """Why ``msg`` is malformed, or None. ``export_dtype``: the receiver's FlowTable export dtype."""
    if not isinstance(msg, MESSAGE_TYPES):
        return f"not a replication message: {type(msg).__name__}"
    if not (_is_count(msg.epoch) and _is_count(msg.pair)):
        return "epoch and pair must be non-negative ints"
    if isinstance(msg, Commit):
        return None if _is_count(msg.upto) else "bad commit point"
    if not _is_count(msg.batch, 1):
        return "batch ids start at 1"
    if isinstance(msg, Vote):
        return None if _is_count(msg.committed) and msg.committed <= msg.batch else "bad commit point in vote"
    if isinstance(msg, NeedFrom):
        return None
    if isinstance(msg, Prepare):
        if not (_is_count(msg.committed_upto) and msg.committed_upto < msg.batch):
            return "bad committed_upto"
        d = msg.delta
        if not isinstance(d, Delta):
            return "delta is not a Delta"
        return (_stamps_reason(msg.stamps) or _records_reason(d.records, export_dtype)
                or (None if _u8_vector(d.removed) else "removed is not a uint64 vector")
                or _ne_reason(d.ne_flows, d.ne_next))
    if isinstance(msg, Sync):
        return (_stamps_reason(msg.stamps) or _records_reason(msg.records, export_dtype)
                or _ne_reason(msg.ne_flows, msg.ne_next) or _payloads_reason(msg.payloads, msg.stamps))
    # Packets, Missing
    reason = _stamps_reason(msg.stamps)
    if reason is None and isinstance(msg, Packets):
        reason = _payloads_reason(msg.payloads, msg.stamps)
    return reason
