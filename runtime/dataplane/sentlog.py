"""A stamping unit's log of the packets it handed to ZeroMQ for other nodes, in supervisor-owned memory.

Pushing a packet into a local ring is done when the call returns: the ring is
shared memory that outlives the unit. Sending it to another node's fabric is
not: ZeroMQ queues the message in the process and writes it from its I/O
thread, so a unit killed right after a batch (journal committed) loses what
was still queued, both the primary's copy and the secondary's. The unit
therefore also writes every remote send here, and its successor sends again
what was logged in the last ``RESEND_WINDOW_NS``: receivers drop what they
already have (the ordering unit counts a duplicate, a secondary's buffer is
keyed by stamp), so sending twice is harmless and sending once is not enough.

Layout: int64 word [records written, ever], then ``SLOTS`` packet records and
their send times (a circular log, overwritten oldest first).
"""

from __future__ import annotations

import numpy as np

from deft.runtime.dataplane.packet import PACKET_DTYPE, copy_records
from deft.runtime.ring.shm import attach_segment, create_segment, release_segment

SLOTS = 4096
RESEND_WINDOW_NS = 500_000_000  # well above ZeroMQ's queueing time, well below any flow idle timeout


class SentLog:
    def __init__(self, name: str, mm, owner: bool):
        self.name = name
        self._mm = mm
        self._owner = owner
        self.words = np.ndarray((1,), dtype=np.int64, buffer=mm)
        self.sent_ns = np.ndarray((SLOTS,), dtype=np.int64, buffer=mm, offset=8)
        self.records = np.ndarray((SLOTS,), dtype=PACKET_DTYPE, buffer=mm, offset=8 + 8 * SLOTS)

    @staticmethod
    def nbytes() -> int:
        return 8 + 8 * SLOTS + PACKET_DTYPE.itemsize * SLOTS

    @classmethod
    def create(cls, name: str) -> "SentLog":
        return cls(name, create_segment(name, cls.nbytes()), owner=True)

    @classmethod
    def attach(cls, name: str) -> "SentLog":
        return cls(name, attach_segment(name), owner=False)

    def append(self, records: np.ndarray, index: np.ndarray, now_ns: int) -> None:
        """Log ``records[index]`` (what is about to be sent), oldest overwritten."""
        index = index[-SLOTS:]
        start = int(self.words[0])
        at = start % SLOTS
        first = min(len(index), SLOTS - at)   # up to the end of the log, then from its start
        copy_records(self.records[at: at + first], records, index[:first])
        self.sent_ns[at: at + first] = now_ns
        if first < len(index):
            copy_records(self.records[: len(index) - first], records, index[first:])
            self.sent_ns[: len(index) - first] = now_ns
        self.words[0] = start + len(index)  # last: a successor never resends a half-written record

    def recent(self, now_ns: int) -> np.ndarray:
        """Copies of the records logged within RESEND_WINDOW_NS, oldest first."""
        total = int(self.words[0])
        n = min(total, SLOTS)
        pos = (total - n + np.arange(n)) % SLOTS
        pos = pos[self.sent_ns[pos] >= now_ns - RESEND_WINDOW_NS]
        return self.records[pos].copy()

    def close(self) -> None:
        self.words = self.sent_ns = self.records = None  # type: ignore[assignment]
        release_segment(self._mm, self.name, self._owner)
