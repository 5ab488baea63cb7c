"""A worker's replication roles, wired to the 2PC core (``runtime/replication``) over ZeroMQ.

With ``[nf] replicate``, the routes name for every pair a primary and a
secondary on another node. This worker is the primary of the pairs whose
primary is (this node, its index), and the secondary of those whose secondary
is; it binds its replication ROUTER at ``[node] replication`` port + index.

Primary: at every release the batch (its stamps in processing order and the
state it changed) goes to the secondary by 2PC; the batch's output is staged
and leaves for the egress ring only on the core's ``Release``, after the
``WriteDecision`` (the commit record word) and before the Commit is sent. A
new pair (new routes epoch) starts with a Sync of the whole flow table;
batches processed before it is decided are held and released when it is.

Secondary: duplicates (``dup = 1`` records) are buffered by stamp in the core;
Prepares are staged and voted on, Commits applied to a copy of the table.

Not yet (issue 3): take-over on a failure, the commit record in supervisor
shared memory (today the worker's counter block), a bound on the secondary's
buffer, packets pending in the primary's ordering unit at Sync time.
"""

from __future__ import annotations


import numpy as np
import zmq

from deft.runtime.dataplane.routes import NONE, W_PAIRS, Routes
from deft.runtime.params import split_host_port
from deft.runtime.replication.actions import Refused, Release, WriteDecision
from deft.runtime.replication.codec import Codec
from deft.runtime.replication.driver import PrimaryLink, Router, SecondaryLink
from deft.runtime.replication.messages import STAMP_DTYPE, Delta, stamps_of
from deft.runtime.replication.primary import PrimaryReplicator
from deft.runtime.replication.secondary import SecondaryReplica

TICK_NS = 5_000_000  # retransmits and Missing requests count in these


def endpoint_of(base: str, index: int) -> str:
    """Worker ``index``'s replication endpoint: the base endpoint's port + index."""
    host, port = split_host_port(base.partition("://")[2])
    return f"tcp://{host}:{port + index}"


class Replication:
    def __init__(self, topo, index: int, worker, log):
        self.index = index
        self.worker = worker
        self.log = log
        self.routes = Routes.attach(topo.routes())
        self.zctx = zmq.Context()
        self.router = Router(self.zctx, endpoint_of(topo.config.node.replication, index))
        self.codec = Codec(worker.table.export_dtype())
        self.epoch = 0
        self.primary: PrimaryLink | None = None
        self.primary_core: PrimaryReplicator | None = None
        self.secondaries: dict[int, SecondaryLink] = {}
        self.staged: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.committed = 0
        self.refused = 0
        self.unknown_duplicates = 0
        self.next_tick = 0

    # -- roles ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take up the roles of a new routes epoch."""
        epoch = self.routes.epoch
        if epoch == self.epoch:
            return
        self.epoch = epoch
        me, nodes = self.routes.self_node, self.routes.nodes()
        pairs = self.routes.pairs[: int(self.routes.words[W_PAIRS])].tolist()
        mine = [(p, sn, si) for p, (pn, pi, sn, si) in enumerate(pairs) if (pn, pi) == (me, self.index)]
        serving = {p for p, (_, _, sn, si) in enumerate(pairs) if (sn, si) == (me, self.index)}
        self._become_primary(mine[0] if mine and mine[0][1] != NONE else None, nodes)
        for p in list(self.secondaries):
            if p not in serving:
                self.secondaries.pop(p).close()
        for p in serving:  # a fresh replica per epoch: the primary's Sync brings its state
            if p in self.secondaries:
                self.secondaries.pop(p).close()
            core = SecondaryReplica(epoch, p, self.worker.nf.new_table(), synced=False)
            self.secondaries[p] = SecondaryLink(self.router, core, self.codec)

    def _become_primary(self, pair, nodes) -> None:
        if self.primary is not None:
            self.primary.close()
            self.primary = None
        if pair is None:
            if self.primary_core is not None:  # no secondary any more: release what is staged now
                self.primary_core = None
                for t in sorted(self.staged):
                    self._release(t)
            return
        p, sn, si = pair
        if self.primary_core is None or self.primary_core.pair != p:
            self.primary_core = PrimaryReplicator(0, p, has_secondary=False, last_batch=0)
        else:
            self.execute(self.primary_core.secondary_lost())
        self.primary = PrimaryLink(self.zctx, self.primary_core, self.codec, endpoint_of(nodes[sn][2], si))
        table, ordering = self.worker.table, self.worker.ordering
        table.take_changes()  # the Sync carries everything; later Prepares carry what changes after it
        flows = np.array(sorted(ordering.next_expected), dtype=np.uint64)
        nexts = np.array([ordering.next_expected[f] for f in flows.tolist()], dtype=np.uint64)
        records = table.export_rows(table.live_rows())
        self.execute(self.primary.execute(self.primary_core.start_sync(
            self.epoch, records, flows, nexts, np.zeros(0, dtype=STAMP_DTYPE))))

    # -- the primary's release path --------------------------------------------------------------
    @property
    def replicating(self) -> bool:
        return self.primary is not None

    def window_open(self) -> bool:
        return self.primary is None or self.primary.window_open

    def in_flight(self) -> int:
        return 0 if self.primary_core is None else self.primary_core.in_flight

    def submit(self, batch: np.ndarray, forward: np.ndarray | None) -> None:
        """A processed batch: stage its output, send its state by 2PC; it leaves on Release."""
        core = self.primary_core
        t = core.next_batch
        stamps = stamps_of(batch)
        delta = Delta.capture(self.worker.table, self.worker.ordering.next_expected, stamps)
        self.staged[t] = (batch.copy(), None if forward is None else forward.copy())
        self.execute(self.primary.submit_batch(t, stamps, delta))

    def _release(self, t: int) -> None:
        records, forward = self.staged.pop(t)
        self.worker.push_egress(records, forward)
        self.worker.count["released"] += len(records) if forward is None else len(forward)

    def execute(self, actions) -> None:
        for action in actions:
            if isinstance(action, WriteDecision):
                self.committed = action.batch  # the commit record (supervisor memory: next step)
            elif isinstance(action, Release):
                self._release(action.batch)
            elif isinstance(action, Refused):
                self.refused += 1
        if self.primary is not None:
            self.primary.flush()  # only now may the Commit go out (WriteDecision -> Release -> Commit)

    # -- the secondary's side ---------------------------------------------------------------------
    def on_duplicates(self, records: np.ndarray) -> None:
        for p in np.unique(records["pair"]).tolist():
            part = records[records["pair"] == p]
            link = self.secondaries.get(p)
            if link is None:
                self.unknown_duplicates += len(part)
                continue
            self.execute(link.on_packets(stamps_of(part), [r.tobytes() for r in part]))  # copies, not views

    # -- every loop ---------------------------------------------------------------------------------
    def poll(self, now_ns: int) -> None:
        self.refresh()
        if self.primary is not None:
            self.execute(self.primary.poll_once(0))
        for link in list(self.secondaries.values()):
            self.execute(link.poll_once(0))
        if now_ns >= self.next_tick:
            self.next_tick = now_ns + TICK_NS
            if self.primary is not None:
                self.execute(self.primary.tick())
            for link in self.secondaries.values():
                self.execute(link.tick())

    def counters(self) -> dict[str, int]:
        """The worker's replication counters (published with its others, once per batch)."""
        replicas = [link.core for link in self.secondaries.values()]
        return {
            "repl_committed": self.committed, "repl_staged": len(self.staged), "repl_refused": self.refused,
            "repl_in_flight": self.in_flight(), "repl_unknown_duplicates": self.unknown_duplicates,
            "repl_bad_frames": self.router.bad_frames + sum(link.bad_frames for link in self._links()),
            "replica_committed": sum(r.committed for r in replicas),
            "replica_flows": sum(len(r.table) for r in replicas),
            "replica_buffered": sum(r.buffered for r in replicas),
        }

    def _links(self) -> list:
        return [*self.secondaries.values(), *([self.primary] if self.primary is not None else [])]

    def close(self) -> None:
        if self.primary is not None:
            self.primary.close()
        for link in self.secondaries.values():
            link.close()
        self.router.close()
        self.routes.close()
        self.zctx.term()
