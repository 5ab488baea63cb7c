"""Moving buckets from one pair to another, the workers' side (the paper's section V).

The controller (``runtime/controller/bucketmove.py``) moves a set of buckets S
from pair A to pair B in three steps, each a request to a supervisor that
posts it to a worker through a ``MoveBox`` (a small block of shared memory,
with the bulk in a file beside it: ``move.nf<i>.req`` / ``.ack`` in /dev/shm)
and rings its bell:

1. **hold** (A's primary): A's packets of S are held unprocessed from now on
   (those its ordering kept waiting for a gap too); the batches that carry
   what it processed of S before are flushed by 2PC, and once every one of them
   has left the node the answer is S's flows as they are: their rows (state,
   last timestamp, hash) and ``nextExpectedPktID``. From the hold on, A's state
   of S does not change.
2. **import** (B's primary): the rows and ``nextExpectedPktID`` go into B's table
   and ordering, and to B's secondary as a 2PC batch of their own (no packets);
   the answer comes when that batch is decided, so B's secondary has them
   too. Until the controller switches the rule, nothing of S reaches B. From
   here B's ordering does not adopt an unknown flow of S mid-stream (a flow A
   never saw starts at seq 1, and its first packets may be held at A) and waits
   ``MOVE_GAP_NS`` for gaps, since A forwards late.
3. the controller switches S to B in the routes (a new epoch). A, taking the
   routes up, forwards what it held of S to B (with copies for B's secondary:
   they never went there) and hands its rows of S to the NF's ``moved_out``
   (forgotten; the NAT keeps a "lent" row per port, which went with its flow).
   Any packet of S that still reaches A (or a replica of A's that takes over
   later: its buffered copies of what A held) is forwarded the same way
   (``Worker.divert``). B's ordering puts the forwarded packets before the
   new ones, by seq.

A hold lapses after ``LEASE_NS`` without the switch (the controller died or
gave up): A processes what it held and goes on, and the controller never
switches after its own, shorter, budget for the hold (``LEASE_NS`` minus a
route push). ``cancel`` ends a hold (and B's guard) at once.
"""

from __future__ import annotations

import base64
import binascii
import io
import os

import numpy as np

from deft.runtime.consensus.failpoints import failpoint
from deft.runtime.dataplane.stamper import bucket_of
from deft.runtime.worker.freeze import RequestBox, await_answer
from deft.runtime.worker.pairslot import TAKEOVER_GAP_NS
from deft.runtime.worker.ports import MovePort

FIELDS = ["req_seq", "req_op", "req_move", "req_pair", "req_epoch", "ack_seq", "ack_status", "ack_move"]
HOLD, IMPORT, CANCEL = 1, 2, 3
OPS = {HOLD: "hold", IMPORT: "import", CANCEL: "cancel"}
# answers
(DONE, WORKING, NOT_PRIMARY, NO_SECONDARY, NOT_SYNCED, BUSY, OLD_ROUTES, BAD_REQUEST, OTHER_MOVE,
 UNSUPPORTED, WINDOW_FULL) = range(1, 12)
REASONS = {DONE: None, WORKING: "in progress", NOT_PRIMARY: "not the pair's primary",
           NO_SECONDARY: "the pair has no secondary", NOT_SYNCED: "its secondary is not synced yet",
           BUSY: "the pair is frozen or waits for global results",
           OLD_ROUTES: "the worker has not taken up the routes the request is for yet",
           BAD_REQUEST: "bad request", OTHER_MOVE: "another move holds the pair",
           UNSUPPORTED: "bucket moves of an NF with global operations are not supported yet",
           WINDOW_FULL: "its 2PC window is full"}
RETRY = {WORKING, NOT_SYNCED, BUSY, OLD_ROUTES, OTHER_MOVE, WINDOW_FULL}
LEASE_NS = 2_000_000_000     # a hold without the switch ends then
GUARD_NS = 5_000_000_000     # B's ordering waits for A's forwarded packets of S this long after the import
# ... and a gap this long (not TAKEOVER_GAP_NS): A forwards only once it has the new routes, behind
# whatever queues between A and B hold. Under overload (back-to-back moves at 3 kpps on two cores:
# p99 near a second) a 1 s wait was exceeded: 133 packets skipped, then dropped as stale, in about one
# full-suite run in two. The forwarded packets always come (A, or A's replica that takes over, sends
# them); the wait only bounds a packet the ingress really lost.
MOVE_GAP_NS = 4_000_000_000


class MoveBox(RequestBox):
    """The bucket-move requests of one worker: answered (status, move)."""

    fields = FIELDS


# -- the bulk beside the box: numpy arrays in one file (no pickle) ------------------------------------
def pack(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a ``pack``ed blob; ValueError naming what is wrong."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            files = set(z.files)
            got = {n: z[n] for n in names if n in files}
    except Exception as exc:  # noqa: BLE001 - zip/npy errors of many kinds: one clear message
        raise ValueError(f"move payload unreadable: {exc}") from None
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"move payload lacks {', '.join(missing)}")
    return got


def write_file(path: str, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a payload."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def bucket_mask(buckets: np.ndarray, n_buckets: int) -> np.ndarray:
    buckets = np.asarray(buckets, dtype=np.int64)
    if buckets.ndim != 1 or not len(buckets) or buckets.min() < 0 or buckets.max() >= n_buckets:
        raise ValueError(f"buckets must be a non-empty list of 0..{n_buckets - 1}")
    mask = np.zeros(n_buckets, dtype=bool)
    mask[buckets] = True
    return mask


class MoveOut:
    """A hold on pair A: the buckets, what arrived for them, and when its flush is done."""

    def __init__(self, move: int, mask: np.ndarray, flush_upto: int, until_ns: int, first: np.ndarray):
        self.move = move
        self.mask = mask
        self.flush_upto = flush_upto   # the last 2PC batch that may carry a packet of S processed here
        self.until_ns = until_ns
        self.held: list[np.ndarray] = [first] if len(first) else []
        self.exported = False

    def take(self, arrived: np.ndarray) -> np.ndarray:
        """Keep ``arrived``'s packets of S; return the others."""
        mine = self.mask[bucket_of(arrived["key_hash"], len(self.mask))]
        if not mine.any():
            return arrived
        self.held.append(arrived[mine].copy())
        return arrived[~mine]


class Mover:
    """The worker's side: requests in, answers out, holds to finish or end."""

    def __init__(self, worker: MovePort, box: MoveBox, req_path: str, ack_path: str):
        self.worker = worker
        self.box = box
        self.req_path, self.ack_path = req_path, ack_path
        self.seen = box.get("req_seq")    # a request from before this worker started is not ours
        self.imports: dict[int, tuple[int, int]] = {}   # pair -> (move, 2PC batch of its import; -1: decided)
        self.guards: dict[int, int] = {}                # pair -> monotonic ns its ordering's guard ends
        self.pending: tuple[int, int] | None = None     # (request seq, move) answered when it is done

    # -- each round ----------------------------------------------------------------------------------
    def poll(self, now_ns: int) -> None:
        seq = self.box.get("req_seq")
        if seq != self.seen:
            self.seen = seq
            b = self.box
            self.handle(seq, b.get("req_op"), b.get("req_move"), b.get("req_pair"), b.get("req_epoch"), now_ns)
        for slot in list(self.worker.slots.values()):
            out = slot.move_out
            if out is None:
                continue
            if not out.exported and self.flushed(slot, out):
                self.export(slot, out)
            if now_ns >= out.until_ns:
                self.worker.log.warning("pair %d: hold of move %d lapsed (no route change came)", slot.pair, out.move)
                self.worker.count["move_holds_lapsed"] += 1
                self.end_hold(slot)
        for pair, until in list(self.guards.items()):
            slot = self.worker.slots.get(pair)
            if slot is None or now_ns >= until:
                del self.guards[pair]
                if slot is not None:
                    slot.ordering.guarded = None

    def flushed(self, slot, out: MoveOut) -> bool:
        """Every batch that may carry a packet of S processed here has left the node."""
        role = slot.role
        if role is None or int(self.worker.record.committed[slot.pair]) < out.flush_upto:
            return False
        return not any(batch <= out.flush_upto for _, batch in role.unsent)

    def needs_flush(self, slot) -> bool:
        """``slot``'s output must go now (a hold waits for it)."""
        out = slot.move_out
        return out is not None and not out.exported

    def next_due(self) -> int | None:
        """When a hold or a guard ends (the worker's sleep must not pass it)."""
        times = [s.move_out.until_ns for s in self.worker.slots.values() if s.move_out is not None]
        times += list(self.guards.values())
        return min(times, default=None)

    # -- requests ------------------------------------------------------------------------------------
    def handle(self, seq: int, op: int, move: int, pair: int, epoch: int, now_ns: int) -> None:
        w = self.worker
        w.refresh()   # the routes written before the request came are the ones to check
        slot = w.slots.get(pair)
        if op not in OPS:
            status = BAD_REQUEST
        elif op == CANCEL:
            status = self.cancel(slot, move)
        elif w.epoch < epoch:
            status = OLD_ROUTES
        elif slot is None:
            status = NOT_PRIMARY
        elif slot.role is None or not slot.role.core.has_secondary:
            status = NO_SECONDARY
        elif slot.role.core.holding:
            status = NOT_SYNCED
        elif op == HOLD:
            status = self.hold(slot, move, now_ns)
        else:
            status = self.import_(slot, move, now_ns)
        if status == WORKING:   # answered when done (export, decision); the supervisor may ask again
            self.pending = (seq, move)
        else:
            self.reply(seq, status, move)

    def hold(self, slot, move: int, now_ns: int) -> int:
        out = slot.move_out
        if out is not None:
            if out.move != move:
                return OTHER_MOVE
            return DONE if out.exported else WORKING
        if slot.uses_globals:
            return UNSUPPORTED
        if slot.waiting is not None or slot.frozen:
            return BUSY
        try:
            mask = bucket_mask(unpack(read_file(self.req_path), ("buckets",))["buckets"], self.n_buckets())
        except (OSError, ValueError) as exc:
            self.worker.log.warning("move %d: bad hold request: %s", move, exc)
            return BAD_REQUEST
        w = self.worker
        w.pull()   # what came before the hold is processed here and flushed with it
        first = slot.ordering.take_pending(mask)
        core = slot.role.core
        upto = core.next_batch - 1 + (1 if slot.out.n else 0)   # the output buffer is the next batch
        slot.move_out = MoveOut(move, mask, upto, now_ns + LEASE_NS, first)
        w.count["move_holds"] += 1
        failpoint("worker_move_held")   # tests: die holding S, the flush maybe not out yet
        w.log.info("move %d: pair %d holds %d buckets (%d packets waiting)", move, slot.pair,
                   int(mask.sum()), len(first))
        if self.flushed(slot, slot.move_out):
            self.export(slot, slot.move_out)   # nothing of S in flight: answered at once
            return DONE
        return WORKING

    def export(self, slot, out: MoveOut) -> None:
        """S's rows and nextExpectedPktID, in the ack file (answered DONE)."""
        table, ne = slot.table, slot.ordering.next_expected
        rows = slot.nf.movable(table, table.rows_in_buckets(out.mask))
        records = table.export_rows(rows)
        flows = [f for f in table.flow_ids[rows].tolist() if f in ne]
        write_file(self.ack_path, pack(records=records, flows=np.array(flows, dtype=np.uint64),
                                       nexts=np.array([ne[f] for f in flows], dtype=np.uint64)))
        out.exported = True
        self.worker.count["move_flows_out"] += len(records)
        failpoint("worker_move_exported")   # tests: die with S's state handed out, before the switch
        self.answer_pending(out.move)

    def import_(self, slot, move: int, now_ns: int) -> int:
        got = self.imports.get(slot.pair)
        if got is not None and got[0] == move:
            return DONE if got[1] < 0 else WORKING
        if slot.uses_globals:
            return UNSUPPORTED
        if slot.waiting is not None or slot.frozen:
            return BUSY
        if not slot.role.window_open():
            return WINDOW_FULL
        try:
            req = unpack(read_file(self.req_path), ("buckets", "records", "flows", "nexts"))
            mask = bucket_mask(req["buckets"], self.n_buckets())
            records = req["records"]
            if records.dtype != slot.table.export_dtype() or len(req["flows"]) != len(req["nexts"]):
                raise ValueError("records or nextExpectedPktID not of this NF's layout")
        except (OSError, ValueError) as exc:
            self.worker.log.warning("move %d: bad import request: %s", move, exc)
            return BAD_REQUEST
        flows, nexts = req["flows"].astype(np.uint64), req["nexts"].astype(np.uint64)
        slot.table.import_records(records)
        slot.nf.moved_in(slot.table, np.array([slot.table.row_of(f) for f in records["flow_id"].tolist()], np.int64))
        slot.ordering.next_expected.update(zip(flows.tolist(), nexts.tolist()))
        guarded = slot.ordering.guarded
        slot.ordering.guarded = mask if guarded is None else (guarded | mask)
        self.guards[slot.pair] = now_ns + GUARD_NS
        slot.gap_grace_until = max(slot.gap_grace_until, now_ns + TAKEOVER_GAP_NS + GUARD_NS)
        slot.gap_grace_ns = max(slot.gap_grace_ns, MOVE_GAP_NS)
        t = slot.role.submit_state(records, flows, nexts)
        self.imports[slot.pair] = (move, t)
        failpoint("worker_move_imported")   # tests: die with the import's 2PC batch sent (or queued), undecided
        self.worker.count["move_flows_in"] += len(records)
        self.worker.log.info("move %d: pair %d imported %d flows (2PC batch %d)", move, slot.pair, len(records), t)
        return WORKING

    def decided(self, pair: int, batch: int) -> None:
        """A 2PC batch of ``pair`` was decided (an import's answer waits for it)."""
        got = self.imports.get(pair)
        if got is not None and 0 <= got[1] <= batch:
            self.imports[pair] = (got[0], -1)
            self.answer_pending(got[0])
            failpoint("worker_move_import_decided")   # tests: die with the import decided, maybe before the switch

    def cancel(self, slot, move: int) -> int:
        if slot is not None:
            if slot.move_out is not None and slot.move_out.move == move:
                self.end_hold(slot)
            got = self.imports.get(slot.pair)
            if got is not None and got[0] == move:
                self.guards.pop(slot.pair, None)
                slot.ordering.guarded = None
        return DONE

    # -- the switch, or its end ----------------------------------------------------------------------
    def end_hold(self, slot) -> None:
        """The hold ends without the switch: process what was held, in the order it came."""
        out, slot.move_out = slot.move_out, None
        for part in out.held:
            slot.process(part)

    def on_routes(self, bucket_pair: np.ndarray) -> None:
        """New routes: a hold whose buckets all belong to another pair now is finished (step 3)."""
        for slot in self.worker.slots.values():
            out = slot.move_out
            if out is None:
                continue
            owners = np.unique(bucket_pair[out.mask])
            if len(owners) != 1 or int(owners[0]) == slot.pair:
                continue
            slot.move_out = None
            if slot.ordering.guarded is not None:   # moved in a moment ago and out again: no longer ours
                slot.ordering.guarded = slot.ordering.guarded & ~out.mask
            to = int(owners[0])
            if out.held:
                self.worker.forward_moved(to, out.held)
            failpoint("worker_move_switched")   # tests: die right after forwarding what it held (maybe still queued)
            rows = slot.nf.movable(slot.table, slot.table.rows_in_buckets(out.mask))
            flows = slot.table.flow_ids[rows].tolist()
            slot.nf.moved_out(slot.table, rows)
            slot.ordering.forget(flows)
            self.worker.count["moves_out"] += 1
            self.worker.log.info("move %d: pair %d handed %d flows of %d buckets to pair %d", out.move, slot.pair,
                                 len(flows), int(out.mask.sum()), to)

    def forget(self, pair: int) -> None:
        """The pair left this worker (its held packets went with it: ``Worker.retire``)."""
        self.imports.pop(pair, None)
        self.guards.pop(pair, None)

    def n_buckets(self) -> int:
        return self.worker.cfg.ingress.buckets

    def answer_pending(self, move: int) -> None:
        if self.pending is not None and self.pending[1] == move:
            self.reply(self.pending[0], DONE, move)
            self.pending = None

    def reply(self, seq: int, status: int, move: int) -> None:
        self.box.set("ack_status", status)
        self.box.set("ack_move", move)
        self.box.set("ack_seq", seq)


def ask_and_wait(box: MoveBox, op: int, move: int, pair: int, epoch: int, ring,
                 timeout_s: float = 0.3) -> tuple[int, int] | None:
    """The supervisor's request: post it, wake the worker, wait for its answer (None: none came)."""
    return await_answer(box, box.ask(op=op, move=move, pair=pair, epoch=epoch), ring, timeout_s)


# -- the supervisor's side ------------------------------------------------------------------------------
def serve(request: dict, box: MoveBox, paths: tuple[str, str], ring) -> dict:
    """``{"cmd": "move", "op": hold|import|cancel, "move": M, "pair": P, "instance": I, "epoch": E,
    "buckets": [...], "payload": base64 (import: the hold's answer)}`` posted to worker I.

    The reply says ``done`` (with ``payload``, base64, for a hold), or why not and whether to ask
    again soon (``retry``; an answer that takes longer than a moment, e.g. a hold waiting for its
    flush, is "in progress": ask again with the same move).
    """
    name = request.get("op")
    op = {n: code for code, n in OPS.items()}.get(name) if isinstance(name, str) else None
    if op is None:
        raise ValueError(f"op must be one of {', '.join(OPS.values())}, got {request.get('op')!r}")
    fields = {name: request.get(name, 0 if name == "epoch" else None) for name in ("move", "pair", "epoch")}
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    req_path, ack_path = paths
    if op != CANCEL:
        buckets = request.get("buckets")
        if not isinstance(buckets, list) or not buckets or not all(isinstance(b, int) for b in buckets):
            raise ValueError("buckets must be a non-empty list of ints")
        arrays = {"buckets": np.array(buckets, dtype=np.int64)}
        if op == IMPORT:
            try:
                given = unpack(base64.b64decode(request.get("payload") or b"", validate=True),
                               ("records", "flows", "nexts"))
            except (ValueError, TypeError, binascii.Error) as exc:
                raise ValueError(f"payload: {exc}") from None
            arrays.update(given)
        write_file(req_path, pack(**arrays))
    got = ask_and_wait(box, op, fields["move"], fields["pair"], fields["epoch"], ring)
    if got is None or got[1] != fields["move"]:
        return {"done": False, "reason": "in progress", "retry": True}
    status = got[0]
    reason = REASONS.get(status, f"status {status}")
    if reason is not None:
        return {"done": False, "reason": reason, "retry": status in RETRY}
    reply: dict = {"done": True}
    if op == IMPORT:
        reply["flows"] = len(arrays["records"])
    if op == HOLD:
        reply["payload"] = base64.b64encode(read_file(ack_path)).decode()
    return reply
