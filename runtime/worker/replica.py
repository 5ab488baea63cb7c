"""A worker's replication roles, wired to the 2PC core (``runtime/replication``) over ZeroMQ.

With ``[nf] replicate`` the routes name, for every pair, a primary and maybe
a secondary on another node. A worker binds one replication ROUTER at
``[node] replication`` port + its index and plays:

* ``PrimaryRole`` for each pair it is the primary of that has a secondary:
  every released output batch goes to the secondary by 2PC first (its stamps
  in processing order and the state it changed); its output is staged and
  leaves on the core's ``Release``, through the commit record
  (``Worker.release_committed``); once the node's egress has sent it
  (``note_sent``) the core may tell the secondary it is committed. A new secondary
  (or a new generation of the pair) starts with a Sync of the whole table;
  batches processed before it is decided are held and released when it is.
* ``SecondaryRoles`` for the pairs it is the secondary of: duplicates
  (``dup = 1`` records) are buffered by stamp in the core, Prepares staged
  and voted on, Commits applied to the replica's own table. When the routes
  make this worker the pair's primary, the worker takes the replica over
  (``takeover.TakeOver``).

The 2PC epoch of a pair is its generation in the routes (the epoch of its
last role change), so both sides derive it from the same route set and a
failover elsewhere does not resync this pair.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.packet import PACKET_DTYPE, record_payloads
from deft.runtime.errors import WireError
from deft.runtime.replication.actions import Refused, Release, WriteDecision
from deft.runtime.replication.driver import PrimaryLink, Router, SecondaryLink
from deft.runtime.replication.messages import STAMP_DTYPE, Delta, stamps_of
from deft.runtime.replication.primary import PrimaryReplicator
from deft.runtime.replication.secondary import SecondaryReplica
from deft.runtime.worker.ports import ReplicationPort

TICK_NS = 5_000_000  # retransmits and Missing requests count in these (ticks run only while needed)
COMMIT_QUIET_NS = 250_000_000  # a pair quiet this long tells its secondary what is committed (else the
                               # next Prepare does): a Commit and its Vote per quiet spell, not per batch.
                               # Three wake-ups each (timer, secondary, ack), so not sooner: at 200 pps over
                               # 6 pairs a 50 ms spell came 36 times a second. What it bounds: the batches
                               # a node's death leaves in doubt (replayed, maybe twice) after a quiet spell


class PrimaryRole:
    """The primary's side of one pair: 2PC per output batch, release through the commit record."""

    def __init__(self, worker: ReplicationPort, slot, core: PrimaryReplicator, endpoint: str, key: tuple):
        self.worker = worker
        self.slot = slot
        self.core = core
        self.key = key  # (secondary node, instance, generation): a change means a new secondary
        self.link = PrimaryLink(worker.zctx, core, worker.codec, endpoint, payloads_for=self.payloads_for)
        self.submitted_ns: dict[int, int] = {}
        # released batches the egress has not sent yet: (egress ring position after it, batch)
        self.unsent: deque[tuple[int, int]] = deque()
        self.commit_at = 0   # monotonic ns: an explicit Commit is due (if one is pending) after a quiet spell
        # batch -> (output records, index of the forwarded ones, the records as they arrived)
        self.staged: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def start_sync(self, generation: int) -> None:
        """Bring the (new) secondary up to date: the whole table and nextExpectedPktID, as one batch."""
        table, ordering = self.slot.table, self.slot.ordering
        table.take_changes()  # the Sync carries everything; later Prepares carry what changes after it
        flows = np.array(sorted(ordering.next_expected), dtype=np.uint64)
        nexts = np.array([ordering.next_expected[f] for f in flows.tolist()], dtype=np.uint64)
        records = table.export_rows(table.live_rows())
        self.worker.log.info("pair %d: sync to %s as generation %d (batch %d, %d flows)", self.slot.pair,
                             self.link.sock.getsockopt_string(zmq.LAST_ENDPOINT), generation,
                             self.core.next_batch, len(records))
        self.execute(self.link.execute(self.core.start_sync(
            generation, records, flows, nexts, np.zeros(0, dtype=STAMP_DTYPE))))

    def window_open(self) -> bool:
        return self.link.window_open

    def in_flight(self) -> int:
        return self.core.in_flight

    def needs_tick(self) -> bool:
        """Prepares in flight may need retransmits: the worker keeps its 2PC tick running."""
        return bool(self.core.in_flight)

    def commit_due(self) -> int | None:
        """When an explicit Commit would go (None: nothing to commit, or a Prepare will carry it)."""
        if self.unsent or self.core.commit_pending:
            return self.commit_at
        return None

    def maybe_commit(self, now: int) -> None:
        """After a quiet spell, tell the secondary what is committed (``core.commit``)."""
        if now >= self.commit_at and not self.core.in_flight and self.core.commit_pending:
            self.link.execute(self.core.commit())
            self.commit_at = now + COMMIT_QUIET_NS

    def submit(self, batch: np.ndarray, forward: np.ndarray | None, inputs: np.ndarray | None) -> None:
        """A processed batch: stage its output, send its state by 2PC; it leaves on Release."""
        t = self.core.next_batch
        self.commit_at = time.monotonic_ns() + COMMIT_QUIET_NS   # activity: the Prepare carries commits
        stamps = stamps_of(batch)
        delta = Delta.capture(self.slot.table, self.slot.ordering.next_expected, stamps)
        self.staged[t] = (batch.copy(), None if forward is None else forward.copy(),
                          None if inputs is None else inputs.copy())
        self.submitted_ns[t] = time.monotonic_ns()
        self.execute(self.link.submit_batch(t, stamps, delta))

    def submit_state(self, records: np.ndarray, flows: np.ndarray, nexts: np.ndarray) -> int:
        """A batch of state alone (a bucket move's import: rows and nextExpectedPktID, no packets); its
        number. Its decision says the secondary has them (``Mover.decided``)."""
        t = self.core.next_batch
        self.staged[t] = (np.zeros(0, dtype=PACKET_DTYPE), None, None)
        delta = Delta(records, np.zeros(0, dtype=np.uint64), flows.astype(np.uint64), nexts.astype(np.uint64))
        self.execute(self.link.submit_batch(t, np.zeros(0, dtype=STAMP_DTYPE), delta))
        return t

    def payloads_for(self, batch: int, stamps: np.ndarray) -> list[bytes]:
        """The packets of ``batch`` the secondary lacks, as they arrived here (empty for any not kept)."""
        entry = self.staged.get(batch)
        inputs = None if entry is None else entry[2]
        self.worker.count["repl_packets_asked"] += len(stamps)
        if inputs is None:
            self.worker.count["repl_packets_unknown"] += len(stamps)
            return [b""] * len(stamps)
        row = {key: k for k, key in enumerate(zip(inputs["flow_id"].tolist(), inputs["seq"].tolist()))}
        wanted = zip(stamps["flow_id"].tolist(), stamps["seq"].tolist())
        out = [b"" if (k := row.get(key)) is None else wire.payload_bytes(inputs[k: k + 1]) for key in wanted]
        self.worker.count["repl_packets_unknown"] += sum(1 for x in out if not x)
        return out

    def execute(self, actions) -> None:
        decided = 0
        for action in actions:
            if isinstance(action, WriteDecision):
                decided = max(decided, action.batch)
            elif isinstance(action, Release):
                records, forward, _ = self.staged.pop(action.batch)
                self.worker.release_committed(self.slot.pair, action.batch, records, forward)
                self.unsent.append((self.worker.last_release_end, action.batch))
                sent = self.submitted_ns.pop(action.batch, None)
                if sent is not None:  # 2PC round trip, smoothed: what replication adds to a batch's wait
                    rtt_us = (time.monotonic_ns() - sent) // 1000
                    c = self.worker.count
                    c["repl_rtt_us"] = rtt_us if not c["repl_rtt_us"] else (7 * c["repl_rtt_us"] + rtt_us) // 8
            elif isinstance(action, Refused):
                self.worker.count["repl_refused"] += 1
        if decided:  # a decided batch without output (a Sync) is recorded too: a successor needs it
            self.worker.record.decided(self.slot.pair, decided)
            if self.worker.mover is not None:
                self.worker.mover.decided(self.slot.pair, decided)
        self.note_sent(self.worker.egress.popped)

    def note_sent(self, popped: int) -> None:
        """Tell the core which released batches the egress has SENT (its ring's consumer passed them).

        Released means published to the egress ring; a node that dies before its
        egress sent it loses it, and a secondary that had heard "committed"
        would not replay it. So the core commits a batch to the secondary only
        once it is sent (the contract in runtime/replication/README.md).
        """
        unsent = self.unsent
        while unsent and unsent[0][0] <= popped:
            self.link.execute(self.core.output_sent(unsent.popleft()[1]))

    def poll(self) -> None:
        self.execute(self.link.poll_once(0))

    def tick(self) -> None:
        self.execute(self.link.tick())

    def close(self) -> dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """Stop replicating; return the staged (undecided) batches, oldest first."""
        self.link.close()
        staged, self.staged = dict(sorted(self.staged.items())), {}
        return staged


class SecondaryRoles:
    """The replicas this worker keeps for the pairs it is the secondary of."""

    def __init__(self, worker: ReplicationPort, endpoint: str):
        self.worker = worker
        self.router = Router(worker.zctx, endpoint)
        self.router.on_copies = self.on_copies
        self.copy_buf = np.zeros(4096, dtype=PACKET_DTYPE)
        self.bad_copies = 0
        self.links: dict[int, SecondaryLink] = {}
        self.keys: dict[int, tuple] = {}
        self.unknown_duplicates = 0
        self.ticks = 0

    def ensure(self, pair: int, key: tuple, generation: int) -> None:
        """Be the secondary of ``pair`` for primary+generation ``key``: a fresh replica when it changed."""
        if self.keys.get(pair) == key:
            return
        self.drop(pair)
        core = SecondaryReplica(generation, pair, self.worker.new_table(), synced=False)
        self.worker.log.info("pair %d: secondary here, generation %d", pair, generation)
        self.links[pair] = SecondaryLink(self.router, core, self.worker.codec)
        self.keys[pair] = key

    def drop(self, pair: int) -> None:
        link = self.links.pop(pair, None)
        self.keys.pop(pair, None)
        if link is not None:
            link.close()

    def take(self, pair: int) -> SecondaryLink | None:
        """Hand the replica of ``pair`` to a take-over (the caller closes the link)."""
        self.keys.pop(pair, None)
        return self.links.pop(pair, None)

    def on_copies(self, frames: list[bytes]) -> None:
        """Copies another node's io sent to the 2PC socket (kind COPIES: a node without ``[node] copies``,
        and a hand-over's forwarded copies): to the worker, as from a ring."""
        try:
            _, n = wire.decode_packets(frames, self.worker.cfg.nf.instances, self.copy_buf)
        except WireError:
            self.bad_copies += 1
            return
        self.worker.on_duplicates(self.copy_buf[:n])

    def on_duplicates(self, pair: int, records: np.ndarray) -> None:
        link = self.links.get(pair)
        if link is None:
            self.unknown_duplicates += len(records)
            return
        self._execute(link.on_packets(stamps_of(records), record_payloads(records)))

    def poll(self) -> None:
        """The router had something: route it to the links, then step each link that got mail."""
        self.router.pump(0)
        for link in list(self.links.values()):
            if link.inbox:
                self._execute(link.poll_once(0))

    def needs_tick(self) -> bool:
        """A Prepare waits for packets or for a gap to fill (Missing, NeedFrom are timed)."""
        return any(link.core.waiting for link in self.links.values())

    def tick(self) -> None:
        for link in self.links.values():
            self._execute(link.tick())

    def trim(self) -> None:
        """Drop buffered copies the applied state covers (about once a second)."""
        for link in self.links.values():
            link.core.trim()

    def _execute(self, actions) -> None:
        for action in actions:
            if isinstance(action, Refused):
                self.worker.count["repl_refused"] += 1

    def counters(self) -> dict[str, int]:
        replicas = [link.core for link in self.links.values()]
        return {
            "replica_committed": sum(r.committed for r in replicas),
            "replica_flows": sum(len(r.table) for r in replicas),
            "replica_buffered": sum(r.buffered for r in replicas),
            "replica_waited": sum(r.waited for r in replicas),
            "repl_unknown_duplicates": self.unknown_duplicates,
            "repl_bad_frames": self.router.bad_frames + self.bad_copies
            + sum(link.bad_frames for link in self.links.values()),
        }

    def close(self) -> None:
        for pair in list(self.links):
            self.drop(pair)
        self.router.close()
