"""A worker's commit record: which replicated batches it released, in supervisor-owned shared memory.

The 2PC core decides batch t of pair p; the worker then releases it by
staging its output in the egress ring past the tail (``Ring.stage``),
writing the record, and only then publishing the ring's tail. If the worker
dies anywhere in that sequence, its supervisor (which owns both segments)
finishes or forgets the release consistently (``recover``):

    step                                   crash here -> what the successor sees
    1. stage output past the tail          record says t-1, nothing published: t is replayed by the secondary
    2. record (p, t, end) with valid = 1   supervisor publishes up to end: t released once, decision t
    3. publish the tail                    decision t
    4. committed[p] = t, valid = 0         decision t

Each word is one aligned 8-byte store, so a torn record is impossible: step 2
writes ``valid = 0``, the three fields, then ``valid = 1``.

Layout: int64 words [valid, pair, batch, position, committed[MAX_PAIRS]].
"""

from __future__ import annotations

import numpy as np

from deft.runtime.dataplane.routes import MAX_PAIRS
from deft.runtime.ring.shm import attach_segment, create_segment, release_segment

W_VALID, W_PAIR, W_BATCH, W_POS = range(4)
HEADER = 4


class CommitRecord:
    def __init__(self, name: str, mm, owner: bool):
        self.name = name
        self._mm = mm
        self._owner = owner
        self.words = np.ndarray((HEADER + MAX_PAIRS,), dtype=np.int64, buffer=mm)
        self.committed = self.words[HEADER:]

    @classmethod
    def create(cls, name: str) -> "CommitRecord":
        return cls(name, create_segment(name, 8 * (HEADER + MAX_PAIRS)), owner=True)

    @classmethod
    def attach(cls, name: str) -> "CommitRecord":
        return cls(name, attach_segment(name), owner=False)

    # -- the worker ----------------------------------------------------------------------------------
    def releasing(self, pair: int, batch: int, position: int) -> None:
        """Step 2: batch ``batch`` of ``pair`` is staged up to ring position ``position``; it counts as released."""
        w = self.words
        w[W_VALID] = 0
        w[W_PAIR], w[W_BATCH], w[W_POS] = pair, batch, position
        w[W_VALID] = 1

    def released(self, pair: int, batch: int) -> None:
        """Step 4: the tail is published."""
        self.committed[pair] = batch
        self.words[W_VALID] = 0

    def decided(self, pair: int, batch: int) -> None:
        """A decided batch with nothing to release (a Sync; the newest of several decided at once)."""
        if batch > self.committed[pair]:
            self.committed[pair] = batch

    def reset_pair(self, pair: int, batch: int = 0) -> None:
        """A pair taken up here starts (or continues, after a take-over) at ``batch``."""
        self.committed[pair] = batch

    # -- the supervisor, after the worker died -------------------------------------------------------
    def recover(self, egress) -> dict[int, int]:
        """Finish an interrupted release on ``egress`` (the worker's ring); return {pair: last released batch}.

        Then clear the record for the worker's successor, which starts with no pair.
        """
        w = self.words
        decisions = {int(p): int(b) for p in np.flatnonzero(self.committed) for b in [self.committed[p]]}
        if w[W_VALID] == 1:
            pair, batch = int(w[W_PAIR]), int(w[W_BATCH])
            egress.publish_to(int(w[W_POS]))  # no-op when step 3 was done
            decisions[pair] = max(decisions.get(pair, 0), batch)
        w[:] = 0
        return decisions

    def close(self) -> None:
        self.words = self.committed = None  # type: ignore[assignment]
        release_segment(self._mm, self.name, self._owner)
