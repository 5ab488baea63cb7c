"""A worker's output batches that wait for their global results (the worker's step 6; see ``pairslot``).

An output batch whose NF calls queued global operations is held (``hold``):
its operations go to the node's Raft member as one entry under a session
slot (``session``), the pair pauses, and when the results are in (``poll``)
the NF turns them into final verdicts and the batch is released like any
other (state clock, 2PC, egress; ``finish``). Role changes, and a take-over's
replay whose fence failed, wait for results in place (``finish_now``,
``commit_now``); a take-over's fence does not (``propose``: see ``takeover``).

Session names. A batch a secondary may replay (prepared under the 2PC epoch
this primary started with its Sync) is named after this primary and that
epoch (``replay_prefix``) and numbered by its 2PC batch id, so a take-over
replaying batch t re-proposes exactly that entry, and a fence on that prefix
reports it (``takeover``). Such a batch's entry carries its stamps and NF
calls (``batch_meta``). Any other batch (no secondary yet; a core taken over
or fresh, before its first Sync) is never replayed: the slot numbers those
under a name of its own process.
"""

from __future__ import annotations

import time

from deft.runtime.consensus.failpoints import failpoint
from deft.runtime.worker.globals_client import GLOBAL_WAIT_S, STALE, GlobalClient
from deft.runtime.worker.pairslot import PairSlot, PendingBatch, replay_prefix, session_of
from deft.runtime.worker.ports import GlobalsPort
from deft.runtime.worker.takeover import batch_meta


class GlobalBatches:
    """The held batches of one worker (``worker``: its slots, counters, release) over ``client``."""

    def __init__(self, worker: GlobalsPort, client: GlobalClient):
        self.w, self.client = worker, client
        self.count, self.log = worker.count, worker.log

    def session(self, slot: PairSlot) -> tuple[str, int, int]:
        """(session name, batch number, expected 2PC batch id or -1) of the slot's next output batch."""
        role = slot.role
        if role is not None and role.core.epoch == slot.session_epoch:
            t = role.core.next_batch
            return replay_prefix(slot.pair, self.w.cfg.node.id, self.w.index, role.core.epoch), t, t
        return slot.session_name, slot.next_serial(), -1

    def hold(self, slot: PairSlot) -> None:
        """Take the output buffer as a batch waiting for its global results; send its entry."""
        from deft.runtime.consensus.kv import BadCommand, batch_entry

        pending = slot.hold()
        prefix, t, pending.batch_id = self.session(slot)
        pending.client, pending.seq = session_of(prefix, t)
        # a replayable batch carries its stamps and NF calls: a take-over rebuilds it from them if the
        # primary dies after the entry is applied and before the secondary heard of the batch
        meta = batch_meta(pending.records, pending.segments) if pending.batch_id >= 0 else None
        try:
            pending.entry = batch_entry(pending.client, pending.seq, pending.ops, meta)
        except (BadCommand, TypeError, ValueError) as exc:  # an NF queued what JSON cannot carry
            self.log.error("pair %d: global ops not encodable (%s); judged on the local replica", slot.pair, exc)
            pending.results = STALE
            return
        self.client.submit(pending)
        failpoint("worker_global_proposed")  # tests: die with the entry maybe sent, maybe not

    def finish(self, slot: PairSlot) -> None:
        """The waiting batch's results are in: final verdicts, release, then what arrived meanwhile."""
        pending = slot.waiting
        results = self.results_of(pending.results, len(pending.ops))
        slot.apply_results(pending.records, pending.segments, results)
        self.count["global_batches"] += 1
        self.count["global_ops"] += len(pending.ops)
        self.count["global_ns"] = time.monotonic_ns() - pending.sent_ns if pending.sent_ns else 0
        if pending.batch_id >= 0 and (slot.role is None or slot.role.core.next_batch != pending.batch_id):
            self.log.warning("pair %d: batch committed its global ops as batch %d but goes out as %s", slot.pair,
                             pending.batch_id, slot.role.core.next_batch if slot.role else "unreplicated")
        failpoint("worker_global_applied")  # tests: die with the entry applied, the batch unknown to the secondary
        self.w.release_batch(slot, pending.records, pending.inputs)
        failpoint("worker_global_submitted")  # tests: die with the batch's prepare sent (or queued)
        slot.resume()

    def finish_now(self, slot: PairSlot) -> None:
        """Wait here for the waiting batch's results and release it (role changes: rare, short)."""
        if slot.waiting is None or slot.pair in self.w.fencing:   # a take-over's fence: not a batch
            return
        if slot.waiting.results is None:
            self.client.wait(slot.waiting, GLOBAL_WAIT_S)
        self.finish(slot)

    def commit_now(self, client_prefix: str, t: int, ops: list) -> list:
        """Commit ``ops`` as batch ``t``'s entry and wait for the results (the take-over's replay path)."""
        from deft.runtime.consensus.kv import BadCommand, batch_entry

        client, seq = session_of(client_prefix, t)
        try:
            entry = batch_entry(client, seq, ops)
        except (BadCommand, TypeError, ValueError):
            return [STALE] * len(ops)
        return self.results_of(self.propose_now(client, seq, entry), len(ops))

    def propose(self, client: str, seq: int, entry: bytes) -> PendingBatch:
        """Propose ``entry`` under (client, seq); its ``results`` are set once applied (``poll``), and it
        is proposed again until then (same session slot: applied once)."""
        pending = PendingBatch(None, None, [], [])
        pending.client, pending.seq, pending.entry = client, seq, entry
        self.client.submit(pending)
        return pending

    def give_up(self, pending: PendingBatch) -> None:
        """No more retries of ``pending`` (its answer, if one comes, is ignored)."""
        self.count["global_timeouts"] += 1
        self.client.forget(pending)

    def propose_now(self, client: str, seq: int, entry: bytes):
        """Propose ``entry`` under (client, seq) and wait for its result (STALE after ``GLOBAL_WAIT_S``)."""
        pending = self.propose(client, seq, entry)
        self.client.wait(pending, GLOBAL_WAIT_S)
        return pending.results

    def results_of(self, result, n: int) -> list:
        """The per-op results of an applied entry; STALE for each if it was stale or does not fit."""
        from deft.runtime.consensus.kv import batch_results

        try:
            results = batch_results(result, n)
        except ValueError:  # a replay whose NF call queued other ops than the original batch's calls
            results = [STALE] * n
        if n and results[0] == STALE:
            self.count["global_stale"] += 1
        return results

    def poll(self) -> None:
        """Answers and replica updates in; retries out; release what has its results."""
        self.client.poll()
        self.client.tick(time.monotonic())
        for slot in list(self.w.slots.values()):
            if slot.waiting is not None and slot.waiting.results is not None and slot.pair not in self.w.fencing:
                self.finish(slot)
