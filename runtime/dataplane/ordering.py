"""Per-flow ordering unit (paper IV-B): ``nextExpectedPktID`` and ``pendingList``.

``order(batch)`` returns the packets that may be processed now, in an order
where each flow's packets appear in stamp order with no gap from what was
processed before; the others wait in the pending store until the gap fills.

* seq == next expected: ready; then the flow's pending packets that became
  next are ready too (in the right place: right after it).
* seq > next expected: waits in the flow's pending heap.
* seq < next expected, or a seq already pending: a duplicate or stale packet,
  dropped and counted (it was processed already or is waiting).
* the pending store is bounded; a packet that finds it full is dropped and
  counted, never blocks and never grows memory without bound. Its flow does
  not wait for it (``lost``): a flow stalled on a packet this unit dropped
  itself would hold its later packets for the whole gap wait, fill the store
  and drop more: one burst of overflow became seconds of it.

The common case (no gaps) costs one dict lookup and a compare per packet and
returns the input batch itself, without a copy. Pure: no clock (times are
passed in), no I/O.

Flows that move. Inside DEFT every path is FIFO (SPSC rings, one ZMQ
connection per unit and node) and a flow is stamped by one unit, so an
instance sees a flow's packets in stamp order unless the flow's route changed
under it. Until migration hands over ``nextExpectedPktID`` with the state
(issue 5), an instance therefore ``adopt_unknown`` flows at the first seq it
sees, and ``skip_gaps`` gives up on a gap that has not filled for a while
(its packets went to another instance): a bounded delay instead of a flow
that stalls for ever. Both are counted (``adopted``, ``gaps_skipped``).
"""

from __future__ import annotations

import heapq

import numpy as np


class OrderingUnit:
    def __init__(self, dtype: np.dtype, pending_capacity: int, adopt_unknown: bool = False):
        self.next_expected: dict[int, int] = {}
        self.pending: dict[int, list[tuple[int, int]]] = {}  # flow -> heap of (seq, store slot)
        self.waiting_since: dict[int, int] = {}  # flow -> time its oldest gap was first seen
        self.adopt_unknown = adopt_unknown
        # buckets moved in with their flows' nextExpectedPktID (controller/bucketmove.py): a flow of
        # theirs that is unknown here is new, so it starts at seq 1 instead of being adopted mid-stream
        # (its first packets may still come forwarded by the old pair)
        self.guarded: np.ndarray | None = None   # bool mask over buckets, or None
        self.adopted = 0
        self.gaps_skipped = 0
        self.now_ns = 0
        self.store = np.zeros(pending_capacity, dtype=dtype)
        self._free = list(range(pending_capacity - 1, -1, -1))
        self.stale = 0
        self.duplicate = 0
        self.overflow = 0
        self.lost: dict[int, set[int]] = {}   # flow -> seqs dropped for overflow, not waited for

    @property
    def pending_count(self) -> int:
        return len(self.store) - len(self._free)

    def order(self, batch: np.ndarray, now_ns: int = 0) -> np.ndarray:
        """The packets of ``batch`` (and of the pending store) that are ready, in order."""
        ne = self.next_expected
        fids = batch["flow_id"].tolist()
        seqs = batch["seq"].tolist()
        self.now_ns = now_ns
        if self.adopt_unknown:
            guarded = self.guarded
            for i, (f, s) in enumerate(zip(fids, seqs)):
                if f not in ne:
                    if guarded is not None and guarded[int(batch["key_hash"][i]) % len(guarded)]:
                        continue
                    ne[f] = s
                    self.adopted += 1
        if not self.pending and not self.lost:
            # fast path: everything in order -> return the batch as it is
            for i, (f, s) in enumerate(zip(fids, seqs)):
                if ne.get(f, 1) != s:
                    break
                ne[f] = s + 1
            else:
                return batch
            done = i
        else:
            done = 0
        picks: list[tuple[bool, int]] = [(False, j) for j in range(done)]
        for i in range(done, len(fids)):
            f, s = fids[i], seqs[i]
            if f in self.lost:   # next_expected may have been set from outside (a bucket import)
                self._past_lost(f)
            expected = ne.get(f, 1)
            if s == expected:
                picks.append((False, i))
                ne[f] = s + 1
                if f in self.lost:
                    self._past_lost(f)
                if f in self.pending:
                    self._drain(f, picks)
            elif s < expected:
                self.stale += 1
            else:
                self._hold(f, s, batch[i])
        return self._gather(batch, picks)

    def _hold(self, flow: int, seq: int, record: np.ndarray) -> None:
        heap = self.pending.setdefault(flow, [])
        self.waiting_since.setdefault(flow, self.now_ns)
        if any(q == seq for q, _ in heap):
            self.duplicate += 1
            return
        if not self._free:
            self.overflow += 1
            self.lost.setdefault(flow, set()).add(seq)
            if not heap:
                del self.pending[flow]
                self.waiting_since.pop(flow, None)
            return
        slot = self._free.pop()
        self.store[slot] = record
        heapq.heappush(heap, (seq, slot))

    def _drain(self, flow: int, picks: list[tuple[bool, int]]) -> None:
        heap = self.pending[flow]
        ne = self.next_expected
        while heap and heap[0][0] <= ne[flow]:
            seq, slot = heapq.heappop(heap)
            if seq == ne[flow]:
                picks.append((True, slot))
                ne[flow] = seq + 1
                if flow in self.lost:
                    self._past_lost(flow)
            else:  # a pending copy of something already processed
                self.stale += 1
                self._free.append(slot)
        if not heap:
            del self.pending[flow]
            self.waiting_since.pop(flow, None)
        else:
            self.waiting_since[flow] = self.now_ns  # progress: the clock restarts for the next gap

    def _past_lost(self, flow: int) -> None:
        """Move ``flow``'s next expected seq past the packets this unit dropped."""
        lost = self.lost[flow]
        n = self.next_expected.get(flow, 1)
        while n in lost:
            n += 1
        self.next_expected[flow] = n
        lost = {q for q in lost if q > n}
        if lost:
            self.lost[flow] = lost
        else:
            del self.lost[flow]

    def skip_gaps(self, now_ns: int, max_wait_ns: int) -> np.ndarray:
        """Give up on gaps older than ``max_wait_ns``: their flows continue from the oldest pending seq."""
        self.now_ns = now_ns
        stale = [f for f, t in self.waiting_since.items() if now_ns - t >= max_wait_ns]
        picks: list[tuple[bool, int]] = []
        for flow in stale:
            self.next_expected[flow] = self.pending[flow][0][0]
            self.gaps_skipped += 1
            self._drain(flow, picks)
        return self._gather(self.store[:0], picks)

    def _gather(self, batch: np.ndarray, picks: list[tuple[bool, int]]) -> np.ndarray:
        out = np.empty(len(picks), dtype=batch.dtype)
        if not picks:
            return out
        from_store = np.array([p[0] for p in picks], dtype=bool)
        index = np.array([p[1] for p in picks], dtype=np.int64)
        out[~from_store] = batch[index[~from_store]]
        slots = index[from_store]
        out[from_store] = self.store[slots]
        self._free.extend(slots.tolist())
        return out

    def take_pending(self, buckets: np.ndarray | None = None) -> np.ndarray:
        """The packets waiting for a gap (per flow in seq order), removed from the store: for a pair
        that leaves this worker, so they go on to its next primary instead of being lost. ``buckets``:
        only those of the flows in these buckets (a bool mask over all of them: a bucket move)."""
        taken = sorted(f for f, heap in self.pending.items()
                       if buckets is None or buckets[int(self.store[heap[0][1]]["key_hash"]) % len(buckets)])
        slots = [slot for flow in taken for _, slot in sorted(self.pending[flow])]
        out = self.store[np.array(slots, dtype=np.int64)].copy() if slots else self.store[:0].copy()
        self._free.extend(slots)
        for flow in taken:
            del self.pending[flow]
            self.waiting_since.pop(flow, None)
            self.lost.pop(flow, None)
        return out

    def forget(self, flow_ids: list[int]) -> None:
        """Drop ordering state of flows that no longer come here (migration, expiry)."""
        for f in flow_ids:
            self.next_expected.pop(f, None)
            self.waiting_since.pop(f, None)
            self.lost.pop(f, None)
            for _, slot in self.pending.pop(f, []):
                self._free.append(slot)
