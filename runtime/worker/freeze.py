"""A planned hand-over's first step on the primary: freeze a pair (see runtime/controller/moves.py).

The controller asks the primary's supervisor, which asks the worker through a
small block of shared memory (``FreezeBox``: the request's sequence number,
pair and operation; the answer's sequence number, status and batch) and
rings its bell. To freeze a pair the worker stops releasing its batches
and, once none is in flight, answers with the last batch it released (its
commit record's). That is the decision the pair's secondary takes it over
with: every batch up to it was released, none after it was, so nothing is in
doubt and the new primary replays exactly what was not released.

A frozen pair holds the packets that arrive for it unprocessed (they have
copies at the secondary, which replays them) and, once answered, releases
nothing. It stays frozen until the routes move it away, its secondary
changes (the hand-over's target died: the freeze is void), or ``LEASE_NS``
passes (the controller died between the freeze and the route change): then
it processes what it held and goes on as the primary. A freeze is refused while the pair has no synced secondary (the
controller retries) or while it waits for global results.
"""

from __future__ import annotations

import time

from deft.runtime.stats import CounterBlock
from deft.runtime.worker.ports import FreezePort

FIELDS = ["req_seq", "req_pair", "req_op", "req_epoch", "ack_seq", "ack_status", "ack_batch"]
FREEZE = 1   # the one request (its code travels in the box: anything else is a bad request)
# answers
FROZEN, NOT_PRIMARY, NO_SECONDARY, NOT_SYNCED, BUSY, BAD_REQUEST, OLD_ROUTES = range(1, 8)
REASONS = {FROZEN: None, NOT_PRIMARY: "not the pair's primary", BUSY: "waiting for global results",
           NO_SECONDARY: "the pair has no secondary", NOT_SYNCED: "its secondary is not synced yet",
           OLD_ROUTES: "the worker has not taken up the routes the freeze is for yet",
           BAD_REQUEST: "bad request"}
RETRY = {NOT_SYNCED, BUSY, OLD_ROUTES}   # worth asking again soon
LEASE_NS = 2_000_000_000


class RequestBox:
    """A supervisor-to-worker request block in shared memory (created by the supervisor): named int64
    fields ``req_*`` and ``ack_*``; the request's sequence number is written last, and the answer's."""

    fields: list[str] = []

    def __init__(self, block: CounterBlock):
        self.block = block
        self.v = block.values
        self.i = {name: block.index[name] for name in self.fields}
        self.ack_fields = [f for f in self.fields if f.startswith("ack_") and f != "ack_seq"]

    @classmethod
    def create(cls, name: str):
        return cls(CounterBlock.create(name, cls.fields))

    @classmethod
    def attach(cls, name: str):
        return cls(CounterBlock.attach(name))

    def get(self, field: str) -> int:
        return int(self.v[self.i[field]])

    def set(self, field: str, value: int) -> None:
        self.v[self.i[field]] = value

    # -- the supervisor ------------------------------------------------------------------------------
    def ask(self, **request: int) -> int:
        """Post a request (``req_<name>`` = value; its sequence number last: the worker acts on a
        whole request); the sequence number."""
        seq = self.get("req_seq") + 1
        for name, value in request.items():
            self.set(f"req_{name}", value)
        self.set("req_seq", seq)
        return seq

    def answer(self, seq: int) -> tuple[int, ...] | None:
        """The ``ack_*`` fields (in their order) once the worker answered request ``seq``."""
        if self.get("ack_seq") != seq:
            return None
        return tuple(self.get(f) for f in self.ack_fields)

    def close(self) -> None:
        self.block.close()


class FreezeBox(RequestBox):
    """The freeze requests of one worker: answered (status, the last batch released)."""

    fields = FIELDS


class Freezer:
    """The worker's side: requests in, answers out, and which pairs are frozen.

    A freeze first processes what the worker's inputs hold, then holds the pair's new input
    (``PairSlot.frozen``) and *flushes*: what the pair has processed goes out as batches by 2PC
    (so the secondary gets, through its Missing requests, any packet whose copy went to an
    earlier secondary). Once nothing is left in its output or in flight, the answer goes with the
    commit record's last released batch, and nothing of the pair is released after it.
    """

    def __init__(self, worker: FreezePort, box: FreezeBox):
        self.worker = worker
        self.box = box
        self.seen = box.get("req_seq")   # a request from before this worker started is not ours
        self.flushing: dict[int, int] = {}   # pair -> request seq, answered once all it processed is out
        # a frozen pair's lease is its slot's (``PairSlot.frozen_until``): it goes when the slot goes

    def may_release(self, pair: int) -> bool:
        """For a frozen pair: only while it flushes (after the answer, nothing more)."""
        return pair in self.flushing

    def poll(self, now_ns: int) -> None:
        """Once a round: a new request, freezes to answer, leases to end (a read or two when idle)."""
        seq = self.box.get("req_seq")
        if seq != self.seen:
            self.seen = seq
            self.handle(seq, self.box.get("req_op"), self.box.get("req_pair"), self.box.get("req_epoch"), now_ns)
        if self.flushing:
            for pair, seq in list(self.flushing.items()):
                slot = self.worker.slots.get(pair)
                if slot is None or slot.role is None:
                    del self.flushing[pair]
                    self.reply(seq, NOT_PRIMARY)
                elif slot.out.n == 0 and slot.waiting is None and slot.role.in_flight() == 0:
                    del self.flushing[pair]
                    self.reply(seq, FROZEN, int(self.worker.record.committed[pair]))
        for slot in self.worker.slots.values():
            if slot.frozen and now_ns >= slot.frozen_until:
                self.worker.log.warning("pair %d: freeze lapsed (no route change came); releasing again", slot.pair)
                self.worker.count["freezes_lapsed"] += 1
                self.thaw(slot)

    def handle(self, seq: int, op: int, pair: int, epoch: int, now_ns: int) -> None:
        # the routes written before the request came must be the ones checked: a round that began
        # before the controller's last route change would judge the old secondary synced
        self.worker.refresh()
        if op != FREEZE:
            self.reply(seq, BAD_REQUEST)
            return
        slot = self.worker.slots.get(pair)
        if self.worker.epoch < epoch:
            self.reply(seq, OLD_ROUTES)
        elif slot is None:
            self.reply(seq, NOT_PRIMARY)
        elif slot.role is None or not slot.role.core.has_secondary:
            self.reply(seq, NO_SECONDARY)
        elif slot.role.core.holding:
            self.reply(seq, NOT_SYNCED)
        elif slot.waiting is not None:
            self.reply(seq, BUSY)
        else:
            self.worker.pull()   # what was sent here before the freeze is processed and flushed with it
            slot.frozen_until = now_ns + LEASE_NS
            self.flushing[pair] = seq
            self.worker.count["freezes"] += 1

    def forget(self, pair: int) -> None:
        """The pair left this worker: an unanswered freeze of it gets no answer (the supervisor's
        wait ends without one, which the controller takes as "ask again")."""
        self.flushing.pop(pair, None)

    def thaw(self, slot) -> None:
        """End ``slot``'s freeze: it processes what it held and goes on as the primary."""
        self.flushing.pop(slot.pair, None)
        slot.thaw()

    def reply(self, seq: int, status: int, batch: int = 0) -> None:
        self.box.set("ack_status", status)
        self.box.set("ack_batch", batch)
        self.box.set("ack_seq", seq)


def ask_and_wait(box: FreezeBox, op: int, pair: int, ring, epoch: int = 0,
                 timeout_s: float = 0.3) -> tuple[int, int] | None:
    """The supervisor's request: post it, wake the worker (``ring()``), wait for the answer (None: none came)."""
    return await_answer(box, box.ask(op=op, pair=pair, epoch=epoch), ring, timeout_s)


def await_answer(box: RequestBox, seq: int, ring, timeout_s: float) -> tuple[int, int] | None:
    """Wake the worker that got request ``seq`` and wait for its answer (None: none came)."""
    ring()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = box.answer(seq)
        if got is not None:
            return got
        time.sleep(0.0005)
    return None
