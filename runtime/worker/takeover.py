"""A worker taking a pair over from the replica it kept (paper VI), global operations included (G4).

The replica (``SecondaryReplica.take_over``) gives a plan: the state after
the last batch the dead primary committed, the batches it prepared after that
(applied from their staged state if released, else replayed through the NF),
and the packets buffered beyond them.

Global operations add one step, because the dead primary proposed a batch's
entry to Raft *before* its 2PC prepare: a batch can be applied to the global
state and yet unknown to the replica (the primary died in between). Before
anything is replayed, the new primary proposes a fence on the dead primary's
sessions (``kv.fence_entry``) and waits for it to be applied. The fence's
result says what each of those sessions applied last, with the batch's meta
(its packets' stamps and the split into NF calls, written by
``GlobalBatches.hold``); and nothing the dead primary still had in flight
can take effect after it. The fence is proposed without waiting for it
(``begin_fence``): the pair holds what arrives for it, and the worker goes on
with its other duties (the votes of its replicas, which other primaries'
releases wait for; decided batches of its own pairs) until the fence answers
(``poll_fence``; a Raft election when the leader died with the primary) and
the take-over goes on from there (``finish``). Then:

* a replayed batch whose entry the fence reports runs its original NF calls
  and takes the recorded results (without the fence: it re-proposes the same
  session slot and gets the first results back);
* a batch the fence reports beyond the replica's last batch is rebuilt from
  the buffered packets with those stamps, run call by call, given its
  recorded results and released: its operations count once, its packets go
  out once.

Everything else buffered then goes through the ordering unit as new input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deft.runtime.dataplane.packet import FORWARD, records_from_payloads
from deft.runtime.dataplane.routes import FRESH, UNKNOWN
from deft.runtime.worker.globals_client import GLOBAL_WAIT_S, STALE
from deft.runtime.worker.pairslot import GLOBAL_WINDOW, PairSlot, replay_prefix
from deft.runtime.worker.ports import TakeOverPort

TAKEOVER_COUNTERS = ("takeovers", "takeover_failed", "replay_released", "takeover_fenced",
                     "takeover_fence_failed", "takeover_rebuilt", "takeover_rebuilt_missing",
                     "takeover_rebuilt_before",
                     # a new primary died before its sync here after a hand-over from here: went on
                     # from the state this worker handed over (``Worker.shadows``)
                     "takeover_from_shadow")


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What the fence reports of one of the dead primary's batches: its results and meta."""

    results: Any
    calls: list | None     # [[end record, end op], ...] per NF call, in order
    flows: list | None     # the batch's stamps, in output order
    seqs: list | None


def batch_meta(records: np.ndarray, segments) -> dict:
    """The meta a replayable batch's entry carries: its stamps and its NF calls (see the module doc)."""
    return {"calls": [[end, k1] for _start, end, _k0, k1 in segments],
            "flows": records["flow_id"].tolist(), "seqs": records["seq"].tolist()}


def parse_fence(result: Any) -> dict[int, AppliedBatch]:
    """Batch id -> ``AppliedBatch`` from a fence's result (``session_of`` inverted); garbage is skipped."""
    out: dict[int, AppliedBatch] = {}
    if not isinstance(result, dict):
        return out
    for client, rec in result.items():
        try:
            t = (int(rec["seq"]) - 1) * GLOBAL_WINDOW + int(client.rpartition("/")[2])
            meta = rec.get("meta") or {}
            out[t] = AppliedBatch(rec["results"], meta.get("calls"), meta.get("flows"), meta.get("seqs"))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def records_of(payloads, count: dict | None = None) -> np.ndarray:
    """Packet records from buffered duplicates (``packet.record_payloads``), as input again."""
    records, unusable = records_from_payloads(payloads)
    if count is not None:  # an empty payload: the primary had no copy to send when asked (a lost packet)
        count["replay_unusable"] += unusable
    records["dup"] = 0
    return records


def split_out(rest: np.ndarray, flows: list, seqs: list) -> tuple[np.ndarray, np.ndarray, int]:
    """(packets with these stamps in this order, the rest without them, how many were not there)."""
    where = {(f, s): i for i, (f, s) in enumerate(zip(rest["flow_id"].tolist(), rest["seq"].tolist()))}
    rows = [where[k] for k in zip(flows, seqs) if k in where]
    keep = np.ones(len(rest), dtype=bool)
    keep[rows] = False
    return rest[np.array(rows, dtype=np.int64)], rest[keep], len(flows) - len(rows)


def before(rest: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Mask of ``rest`` packets that precede ``batch`` in their flow (a batch the replica never got)."""
    first: dict[int, int] = {}
    for f, s in zip(batch["flow_id"].tolist(), batch["seq"].tolist()):
        first[f] = min(s, first.get(f, s))
    return np.array([s < first.get(f, s) for f, s in zip(rest["flow_id"].tolist(), rest["seq"].tolist())],
                    dtype=bool)


class TakeOver:
    """One take-over of ``pair`` by ``worker`` (a ``Worker``); ``run`` returns the new slot or None."""

    def __init__(self, worker: TakeOverPort, pair: int, decision: int, n_pairs: int):
        self.w, self.pair, self.decision, self.n_pairs = worker, pair, decision, n_pairs
        self.count, self.log = worker.count, worker.log

    def run(self) -> PairSlot | None:
        w, pair = self.w, self.pair
        if w.secondaries is None or self.decision == FRESH:
            return None
        primary = w.secondaries.keys.get(pair)  # the dead primary: (node id, instance, generation)
        link = w.secondaries.take(pair)
        if link is None:
            return None
        from deft.runtime.replication.errors import ReplicationError

        self.count["takeover_ns"], self.count["takeover_release_ns"] = time.monotonic_ns(), 0
        w.first_release_of = pair
        try:
            plan = link.core.take_over(None if self.decision == UNKNOWN else self.decision)
        except ReplicationError as exc:
            return self.fresh(link, exc)
        link.close()
        slot = w.new_slot(pair, self.n_pairs, adopt_unknown=False, table=plan.table,
                          next_expected=plan.next_expected, keep_inputs=True)
        self.slot, self.plan, self.epoch = slot, plan, link.core.epoch
        self.old_sessions = replay_prefix(pair, primary[0], primary[1], link.core.epoch) if primary else None
        if slot.uses_globals and w.globals is not None and self.old_sessions is not None:
            self.begin_fence()   # the rest when it answers (poll_fence); the worker serves on meanwhile
        else:
            self.finish({})
        return slot

    def finish(self, applied: dict[int, AppliedBatch]) -> None:
        """The take-over from the replica's plan, knowing what the dead primary's sessions applied."""
        w, pair, slot, plan = self.w, self.pair, self.slot, self.plan
        for replay in plan.replays:
            records = self.rerun(records_of(replay.payloads, self.count), replay.batch,
                                 applied.pop(replay.batch, None))
            if replay.release:
                forward = np.flatnonzero(records["verdict"] == FORWARD)
                w.release_committed(pair, replay.batch, records, forward)
                self.count["replay_released"] += len(forward)
        rest = records_of(plan.rest_payloads, self.count) if plan.rest_payloads else None
        last_batch = plan.last_batch
        for t in sorted(t for t in applied if t > plan.last_batch):   # applied, never prepared
            rest = self.rebuild(t, applied[t], rest)
            last_batch = t
        slot.table.take_changes()
        if self.decision != UNKNOWN:   # its old primary may be alive (a hand-over) and forward late packets
            from deft.runtime.worker.pairslot import TAKEOVER_GAP_NS

            slot.gap_grace_until = time.monotonic_ns() + TAKEOVER_GAP_NS
        w.record.reset_pair(pair, last_batch)
        from deft.runtime.replication.primary import PrimaryReplicator

        slot.taken_core = PrimaryReplicator(self.epoch, pair, has_secondary=False, last_batch=last_batch)
        if rest is not None and len(rest):
            slot.process(rest)
        self.count["takeovers"] += 1
        self.log.warning("pair %d taken over: decision %s, %d batches replayed (%d in doubt), %d rebuilt, "
                         "%d packets after", pair, "unknown" if self.decision == UNKNOWN else self.decision,
                         len(plan.replays), len(plan.in_doubt), last_batch - plan.last_batch,
                         0 if rest is None else len(rest))

    def fresh(self, link, exc: Exception) -> PairSlot:
        """No replica to take over (the primary died before its sync here was decided: two failures
        within one sync): the pair goes on from the packets this replica holds. If this worker handed
        the pair over a moment ago (``Worker.shadows``: its table and nextExpectedPktID as they were at
        the hand-over, which nothing released since can be ahead of), from that state: nothing is lost,
        G5 kept. Else with fresh state (G1 kept, G5 not)."""
        from deft.runtime.replication.errors import ReplicationError

        try:
            payloads = link.core.salvage()
        except ReplicationError:
            payloads = ()
        link.close()
        shadow = self.w.shadows.pop(self.pair, None)
        if shadow is not None:
            self.count["takeover_from_shadow"] += 1
            self.log.warning("pair %d: its new primary died before it synced here; going on from the state "
                             "this worker handed over (%d flows) and the %d packets buffered since", self.pair,
                             len(shadow.table), len(payloads))
            slot = self.w.new_slot(self.pair, self.n_pairs, adopt_unknown=False, table=shadow.table,
                                   next_expected=shadow.next_expected, keep_inputs=True)
        else:
            self.count["takeover_failed"] += 1
            self.log.error("pair %d: cannot take over (%s); serving it with fresh state and the %d packets "
                           "buffered here", self.pair, exc, len(payloads))
            slot = self.w.new_slot(self.pair, self.n_pairs, keep_inputs=True)
        if payloads:
            slot.process(records_of(payloads, self.count))
        return slot

    # -- global operations ------------------------------------------------------------------------------
    def begin_fence(self) -> None:
        """Propose the fence on the dead primary's sessions; until it answers the pair holds its input
        (``slot.waiting``) and its route changes wait (``Worker.fencing``)."""
        from deft.runtime.consensus.kv import fence_entry

        client = f"{self.slot.session_name}/fence"
        self.fence_pending = self.w.globals.propose(client, 1, fence_entry(client, 1, self.old_sessions))
        self.fence_sent = time.monotonic()
        self.fence_deadline = self.fence_sent + GLOBAL_WAIT_S   # no leader for this long: go on without
        self.then_replicate: tuple | None = None   # a secondary the routes gave the pair meanwhile
        self.slot.waiting = self.fence_pending
        self.w.fencing[self.pair] = self

    def poll_fence(self, now: float) -> bool:
        """Go on with the take-over if the fence answered (or ``GLOBAL_WAIT_S`` passed); True if done."""
        w, pending = self.w, self.fence_pending
        if pending.results is None and now < self.fence_deadline:
            return False
        del w.fencing[self.pair]
        self.slot.waiting = None
        if pending.results is None:
            w.globals.give_up(pending)
        else:
            self.log.info("pair %d: the fence on %s answered after %.1f ms", self.pair, self.old_sessions,
                          (now - self.fence_sent) * 1000)
        self.finish(self.applied(pending.results))
        self.slot.process_held()   # what arrived for the pair while the fence was out, after the replays
        if self.then_replicate is not None:
            w.replicate(self.slot, *self.then_replicate)
        return True

    def applied(self, result: Any) -> dict[int, AppliedBatch]:
        """What the dead primary's sessions applied, by batch id, from the fence's result."""
        if not isinstance(result, dict):   # no answer (no leader for GLOBAL_WAIT_S), or stale
            self.count["takeover_fence_failed"] += 1
            self.log.error("pair %d: the fence on %s got no answer in %.0f s; replays re-propose, and a "
                           "batch applied but never prepared may count twice", self.pair, self.old_sessions,
                           GLOBAL_WAIT_S)
            return {}
        self.count["takeover_fenced"] += 1
        return parse_fence(result)

    def rerun(self, records: np.ndarray, t: int, applied: AppliedBatch | None, fresh: bool = False) -> np.ndarray:
        """Batch ``t`` through the NF again, its global results the ones its entry got the first time
        (``fresh``: packets the dead primary's entries never covered; their ops are new, this slot's)."""
        slot, w = self.slot, self.w
        calls = applied.calls if applied is not None else None
        if calls and calls[-1][0] == len(records):   # its original NF calls, with the recorded results
            segments, start, k0 = [], 0, 0
            for end, k1 in calls:
                slot.replay(records[start:end])
                slot.last_ops = []
                segments.append((start, end, k0, k1))
                start, k0 = end, k1
            slot.apply_results(records, segments, w.globals.results_of(applied.results, k0))
            return records
        slot.replay(records)
        if slot.last_ops:  # the original batch's entry again: applied once (G4), its first results back
            ops, slot.last_ops = slot.last_ops, []
            if w.globals is None:   # a context that commits at once (LocalGlobals) applied them already
                results = [STALE] * len(ops)
            elif applied is not None:
                results = w.globals.results_of(applied.results, len(ops))
            elif fresh:
                results = w.globals.commit_now(slot.session_name, slot.next_serial(), ops)
            else:
                results = w.globals.commit_now(self.old_sessions or "?", t, ops)
            slot.apply_results(records, [(0, len(records), 0, len(ops))], results)
        return records

    def rebuild(self, t: int, applied: AppliedBatch, rest: np.ndarray | None) -> np.ndarray | None:
        """Batch ``t``: applied to the global state, never prepared here. Its packets are among the
        buffered ones: run them as it did, release them; returns the buffered packets left."""
        if rest is None or not applied.flows or applied.seqs is None:
            self.log.error("pair %d: batch %d was applied to the global state without its stamps; its packets "
                           "go through as new input and its operations may count twice", self.pair, t)
            return rest
        batch, rest, missing = split_out(rest, applied.flows, applied.seqs)
        if missing:  # a packet the primary had and this replica never got (counted: a loss)
            self.count["takeover_rebuilt_missing"] += missing
            self.log.error("pair %d: %d packets of batch %d (applied) are not buffered here", self.pair,
                           missing, t)
        earlier = before(rest, batch)
        if earlier.any():  # a batch without global ops after the last prepared one: processed first
            self.count["takeover_rebuilt_before"] += int(earlier.sum())
            first, rest = rest[earlier], rest[~earlier]
            first = self.rerun(first, t, None, fresh=True)
            self.w.release_committed(self.pair, t, first, np.flatnonzero(first["verdict"] == FORWARD))
        calls = applied.calls if not missing else None   # the calls' boundaries no longer fit
        batch = self.rerun(batch, t, AppliedBatch(applied.results, calls, None, None))
        self.w.release_committed(self.pair, t, batch, np.flatnonzero(batch["verdict"] == FORWARD))
        self.count["takeover_rebuilt"] += 1
        return rest
