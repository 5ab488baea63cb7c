"""NF worker: input rings -> per pair: ordering unit -> NF -> output buffer -> egress ring.

One process per NF instance (paper IV-B). It serves, as their primary, the
pairs the routes give it (normally one; one more after each take-over), each
in a ``PairSlot``:

1. Packets are taken from the input rings only while the output buffers have
   room, so the input rings are the input buffer and they fill up (and the
   switch holds back) when the NF falls behind.
2. Each packet goes to its pair's slot (the record's ``pair``). A packet of a
   pair this worker keeps the replica of (the switch saw the route set that
   makes this worker its primary before this worker did) joins the replica's
   buffer (``early``); one of a pair it does not serve at all (left in a ring
   by a route change) is counted (``not_mine``) and dropped: the pair's new
   primary has its copy.
3. The ordering unit passes on packets in per-flow stamp order and keeps the
   rest pending (bounded by ``buffer_batches x batch_size``).
4. The NF processes what is ready as one numpy batch against the flow table.
5. The output buffer is released as one batch when it holds ``batch_size``
   packets or ``flush_us`` after its first packet went in, or (``flush_on_idle``,
   the default) as soon as the input rings are empty: group commit, so latency
   does not depend on the rate.
   Release = forwarded packets pushed to the supervisor-owned egress ring;
   with replication, after the batch is committed by 2PC and recorded in the
   commit record (``release_committed``).

6. Global operations (NFs with ``uses_globals``; ``globalbatches``, ``pairslot``): with
   ``[raft]``, an output batch whose NF calls queued ops is held while its
   ops go to the node's supervisor as one entry (``GlobalClient``: a DEALER
   to the supervisor's ROUTER, polled in this loop, retried with the same
   (client, seq) until applied); once the results are in, the NF's
   ``on_global_results`` gives the final verdicts, and only then is the batch
   released (state clock, 2PC, egress) as in 5. A SUB to the supervisor's PUB
   keeps this worker's replica of the global state (``ctx.globals.local``).
   Without ``[raft]`` the supervisor answers from one in-process state for
   the node (``globalstate.LocalState``): same path, no replication.

With ``[nf] replicate`` the worker also keeps replicas of the pairs it is the
secondary of (``replica.SecondaryRoles``) and takes one over when the routes
make it that pair's primary (``take_over``, paper VI).

A fresh slot adopts a flow it has not seen at whatever seq it arrives with,
and skips a gap that has not filled within ``gap_timeout_ms``: a restarted
worker without replication, or a route change, sends it flows mid-stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from types import MappingProxyType

import numpy as np

from deft.nfs import Context, make_nf, nf_class
from deft.nfs.base import FlowTable
from deft.runtime.consensus.failpoints import failpoint
from deft.runtime.dataplane.commit_record import CommitRecord
from deft.runtime.dataplane.packet import FORWARD, PACKET_DTYPE
from deft.runtime.dataplane.routes import NONE, Routes
from deft.runtime.dataplane.stamper import bucket_of
from deft.runtime.procs.egress import BURST as EGRESS_BURST
from deft.runtime.procs.egress import UdpSink, send_ring
from deft.runtime.worker.globalbatches import GlobalBatches
from deft.runtime.worker.globals_client import GlobalClient
from deft.runtime.worker.pairslot import SLOT_COUNTERS, PairSlot
from deft.runtime.worker.remote_input import RemoteInput
from deft.runtime.worker.role_plan import BeSecondary, Replicate, Retire, Serve, plan_roles
from deft.runtime.roundcost import round_costs
from deft.runtime.params import endpoint_of
from deft.runtime.worker.takeover import TAKEOVER_COUNTERS, TakeOver
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.sockets import close_context
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology
from deft.runtime.waitset import WaitSet

TICK_NS = 5_000_000        # 2PC retransmits and Missing requests count in these
_WOKE = {why: f"woke_{why}" for why in ("bell", "timer", "packets", "replica", "copies", "votes", "global")}
PUBLISH_NS = 200_000_000   # counters reach shared memory at most this often while busy (a publish sums every
                           # slot's and replica's counters: at 50 ms it was half of the timers' cost at 200 pps)
PUBLISH_IDLE_NS = 100_000_000   # and at most this much later once the worker goes idle: a timer of its own
                                # at PUBLISH_NS was most of the timer wake-ups at 200 pps (20 a second each)
COPIES_HWM = 1024   # copy messages queued here (one per io round and secondary: a packet each at low load)
                    # before the io holds its batches; drained every round, so it bounds a stalled worker

COUNTERS = [
    "ready", "received", "processed", "released", "dropped_by_nf", "stale", "duplicate",
    "pending_overflow", "pending", "batches", "egress_waits", "flows", "nf_errors", "adopted", "gaps_skipped",
    "expired", "pairs", "not_mine", "early",
    # the loop: rounds, and how often it slept (a round without a sleep found more work); what ended
    # each sleep: the bell (its rings), other nodes' packets, the 2PC socket of its replicas, votes
    # for its primary roles, global state, or a timer (each is a wake-up: benchmarks/efficiency.py)
    "rounds", "sleeps", "busy_ns", "woke_bell", "woke_packets", "woke_replica", "woke_votes", "woke_global", "woke_timer",
    "woke_copies",
    # output sent by the worker itself (no replication: see Worker.direct)
    "egress_sent", "egress_send_errors", "egress_icmp_refused",
    # packets from other nodes' io processes (the PULL at [node] fabric + index), and copies for its
    # replicas (the PULL at [node] copies + index)
    "remote_messages", "remote_packets", "remote_bad_frames", "copies_messages", "copies_bad_frames",
    # replication ([nf] replicate): as primary, as secondary, take-overs
    "repl_committed", "repl_in_flight", "repl_staged", "repl_rtt_us", "replica_committed", "replica_flows", "replica_buffered", "replica_waited", "repl_packets_asked",
    "repl_packets_unknown", "replay_unusable",
    "duplicates", "repl_refused", "repl_unknown_duplicates", "repl_bad_frames",
    "replayed", "repl_sent", "repl_received", "repl_dropped",
    # take-overs (see takeover.py): fenced = the dead primary's global sessions closed; rebuilt = batches
    # applied to the global state but never prepared, run again from the buffered packets
    *TAKEOVER_COUNTERS,
    # planned hand-overs (freeze.py): pairs frozen for one, and freezes that lapsed without a route change
    "freezes", "freezes_lapsed",
    # ... and the packets of a handed-over pair sent on to its new primary (forward.py), or not
    "forwarded", "forward_dropped",
    # bucket moves (bucketmove.py): holds, holds that lapsed without the switch, flows exported and
    # imported, moves finished here (the switch came), packets of moved buckets sent on to their pair
    "move_holds", "move_holds_lapsed", "move_flows_out", "move_flows_in", "moves_out", "move_forwarded",
    # the last take-over: when it started, and when its pair's first packet was released (monotonic ns)
    "takeover_ns", "takeover_release_ns",
    # global operations: batches committed, retries, answers that never came (replay), held packets,
    # frames on the global-state sockets that made no sense, results that came back STALE
    "global_batches", "global_ops", "global_retries", "global_timeouts", "global_waiting", "global_held",
    "global_bad_frames", "global_stale", "global_ns",
]
ORDERING_COUNTERS = {"stale": "stale", "duplicate": "duplicate", "pending_overflow": "overflow",
                     "adopted": "adopted", "gaps_skipped": "gaps_skipped"}


class Worker:
    def __init__(self, topo: Topology, index: int, stop, log, restarted: bool):
        cfg = self.cfg = topo.config
        self.node_id = topo.node_id
        self.index = index
        self.stop = stop
        self.log = log
        self.restarted = restarted
        import zmq

        self.zctx = zmq.Context()
        # input: what this node's io stamped here, and what other nodes' io processes send (a PULL)
        self.inputs: list = [Ring.attach(topo.nf_ring(index), PACKET_DTYPE)]
        self.remote: RemoteInput | None = None
        if cfg.node.fabric:
            self.remote = RemoteInput(self.zctx, endpoint_of(cfg.node.fabric, index), cfg.nf.instances, log)
            self.inputs.append(self.remote)
        # copies for the pairs it is the secondary of: this node's io's ring, and what other nodes' io
        # send, on a PULL of its own ([node] copies; without it to the 2PC socket: SecondaryRoles). Both
        # are drained every round and before a route change, and neither wakes the worker: a copy is
        # needed when its Prepare comes, which does (a copy to the 2PC socket woke it: about 0.65 of a
        # worker's 3.7 wake-ups per packet at 200 pps in examples/cluster); only while a Prepare that
        # came first waits for its copies does the PULL wake it (``wait``)
        self.dup_inputs: list = [Ring.attach(topo.dup_ring(index), PACKET_DTYPE)] if cfg.nf.replicate else []
        self.copies: RemoteInput | None = None
        if cfg.nf.replicate and cfg.node.copies:
            self.copies = RemoteInput(self.zctx, endpoint_of(cfg.node.copies, index), cfg.nf.instances, log,
                                      hwm=COPIES_HWM, watched=False)
            self.dup_inputs.append(self.copies)
        self.bell = FdBell.attach(topo.nf_bell(index))  # pollable: see run()
        if hasattr(stop, "on_stop"):   # a SIGTERM ends the sleep at once (procs/common.py)
            stop.on_stop(self.bell.ring)
        self.egress = Ring.attach(topo.egress_ring(index), PACKET_DTYPE)
        self.egress_bell = FdBell.attach(topo.egress_bell())
        # The worker sends its own output (one process hop and the io's wake-up less per batch). Without
        # replication straight from the batch; replicated output is staged in the egress ring first,
        # behind the commit record, and sent from there: the ring's head says what has left the node
        # (the commit rule needs it), and if the worker dies mid-send the supervisor sends the rest
        # (Supervisor.finish_releases)
        self.direct = UdpSink(cfg.egress.send_to) if cfg.egress.sent_by_workers else None
        self.stats = CounterBlock.attach(topo.stats(f"nf{index}"))
        # packets processed per pair as its primary (cumulative; the controller's load per pair)
        self.load = CounterBlock.attach(topo.stats(f"load.nf{index}"))
        self.record = CommitRecord.attach(topo.commit_record(index))
        self.route_tables = None   # the last whole route set refresh() took up (a RouteSnapshot)
        self.freezer = None   # planned hand-overs of its primary pairs (replicated only)
        self.forwarder = None
        self.mover = None     # bucket moves (replicated only)
        if cfg.nf.replicate:
            from deft.runtime.worker.bucketmove import MoveBox, Mover
            from deft.runtime.worker.forward import Forwarder
            from deft.runtime.worker.freeze import FreezeBox, Freezer

            self.freezer = Freezer(self, FreezeBox.attach(topo.stats(f"freeze.nf{index}")))
            self.forwarder = Forwarder(self)
            self.mover = Mover(self, MoveBox.attach(topo.stats(f"move.nf{index}")), *topo.move_files(index))
        self.routes = Routes.attach(topo.routes())
        self.state_dtype = nf_class(cfg.nf.kind).state_dtype
        self.slots: dict[int, PairSlot] = {}
        self.load_base: dict[int, int] = {}   # per pair: processed by its slots here that are gone
        # pairs handed over from here to their secondary, this worker their next secondary: the state
        # as it was at the hand-over, until the new primary's sync here is decided (takeover.fresh)
        self.shadows: dict[int, Shadow] = {}
        # take-overs whose fence on the dead primary's global sessions is out (takeover.py), by pair.
        # Meanwhile the worker serves its replicas (their primaries' releases wait for its votes) and
        # its pairs' decided batches, but takes no new input and no new routes: it acts as if the
        # take-over had not begun, as it did when the fence blocked its loop
        self.fencing: dict[int, TakeOver] = {}
        self.woke_by = "busy"   # what ended the last sleep (count_wake)
        self.costs = round_costs(f"{topo.node_id}.worker{index}")
        self.first_release_of = -1  # the pair just taken over, until its first packet leaves
        self.last_release_end = 0   # egress ring position after the newest committed release
        self.epoch = 0
        # A restarted worker's pairs with a secondary are being taken over there: it must not serve
        # them again with empty state from the route set it died under, only from a newer one.
        self.start_epoch = self.routes.epoch if restarted else -1
        self.gap_ns = cfg.nf.gap_timeout_ms * 1_000_000
        self.next_gap_check = 0
        self.idle_ns = int(cfg.nf.flow_idle_s * 1e9)
        self.next_expiry = 0
        self.next_publish = 0
        self.next_tick = 0
        self.dirty = True           # counters changed since they were last published
        self._waitset = None
        self._polled: list = []
        self.flush_on_idle = cfg.nf.flush_on_idle
        self.flush_ns = cfg.nf.flush_us * 1000
        self._next_input = 0
        # counters live in plain ints and reach shared memory in one numpy write per batch
        self.count = dict.fromkeys(COUNTERS[1:], 0)
        self.retired = dict.fromkeys([*SLOT_COUNTERS, *ORDERING_COUNTERS], 0)  # of slots given up
        self.retired_nf: dict[str, int] = {}
        self.secondaries = None
        if cfg.nf.replicate:
            from deft.runtime.worker.replica import SecondaryRoles
            from deft.runtime.replication.codec import Codec

            self.codec = Codec(self.new_table().export_dtype())
            self.secondaries = SecondaryRoles(self, endpoint_of(cfg.node.replication, index))
        self.gclient: GlobalClient | None = None
        self.globals: GlobalBatches | None = None   # output batches waiting for their global results
        self._slot_ids = itertools.count()
        if make_nf(cfg.nf.kind, cfg.nf_params(), Context(0, 1)).uses_globals:  # may depend on params
            # the supervisor serves them: from its Raft member, or (no [raft]) from one state for the node
            self.gclient = GlobalClient(self.zctx, topo.node_id, self.count)
            self.globals = GlobalBatches(self, self.gclient)
        self._published = [c for c in self.stats.fields if c != "ready"]
        self._published_at = np.array([self.stats.index[c] for c in self._published], dtype=np.int64)
        self.refresh()

    def new_table(self) -> FlowTable:
        return FlowTable(self.state_dtype)

    def new_slot(self, pair: int, n_pairs: int, **kw) -> PairSlot:
        """A PairSlot whose NF context reaches the global state this worker has (Raft, in-process, none)."""
        global_ops = None
        if self.gclient is not None:
            from deft.nfs.base import GlobalOps

            global_ops = GlobalOps(MappingProxyType(self.gclient.replica))
        slot = PairSlot(self.cfg, pair, n_pairs, self.log, global_ops=global_ops, **kw)
        if self.forwarder is not None:
            slot.divert = self.divert
        # batches of a slot without a 2PC core are numbered by the slot: its sessions are its own
        slot.session_name = f"pair{pair}/{self.cfg.node.id}.{os.getpid()}.{next(self._slot_ids)}"
        return slot

    # -- roles ----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take up the roles of a new routes epoch: primary slots, replication, replicas."""
        if self.routes.epoch == self.epoch or self.fencing:   # new routes once every take-over has gone on
            return
        routes = self.routes.snapshot()   # one whole route set (None while the supervisor writes one)
        if routes is None:
            return
        epoch = self.epoch = routes.epoch
        self.route_tables = routes
        if self.dup_inputs:   # copies do not ring the bell (unit.wake): a take-over below must see them all
            self.pull_duplicates()
        rows = routes.table[: routes.n_pairs].tolist()
        n_pairs = len(rows)
        nodes = routes.nodes()
        unprocessed: dict[int, list[np.ndarray]] = {}
        for change in plan_roles(rows, routes.self_node, self.index, set(self.slots),
                                 replicating=self.secondaries is not None,
                                 skip_new_with_secondary=epoch == self.start_epoch):   # see start_epoch
            p = change.pair
            if isinstance(change, Serve):
                self.slots[p] = self.take_over(p, change.decision, n_pairs) or self.new_slot(
                    p, n_pairs, keep_inputs=self.secondaries is not None)
            elif isinstance(change, Replicate):   # keyed by node id: node numbers shift as nodes come and go
                self.replicate(self.slots[p], change.secondary, nodes)
            elif isinstance(change, Retire):
                slot = self.slots.pop(p)
                unprocessed[p] = self.retire(slot)
                if change.secondary_here and slot.frozen:   # a hand-over; this worker its next secondary
                    self.shadows[p] = Shadow(slot.table, dict(slot.ordering.next_expected), time.monotonic_ns())
            elif isinstance(change, BeSecondary):
                pn, pi, gen = change.primary
                self.secondaries.ensure(p, (nodes[pn][0], pi, gen), gen)
                if unprocessed.get(p) and p in self.shadows:   # it forwarded them: a replica must have them
                    self.secondaries.on_duplicates(p, copies_of(unprocessed[p]))
            else:
                self.secondaries.drop(p)
                self.shadows.pop(p, None)
        if self.mover is not None:
            self.mover.on_routes(routes.bucket_pair)

    def replicate(self, slot: PairSlot, key: tuple, nodes) -> None:
        """Give ``slot`` the secondary the routes name (``key`` = node, instance, generation)."""
        from deft.runtime.worker.replica import PrimaryRole
        from deft.runtime.replication.primary import PrimaryReplicator

        if slot.pair in self.fencing:   # taken over, its fence still out: the sync follows the replays
            self.fencing[slot.pair].then_replicate = (key, nodes)
            return
        sn, si, gen = key
        key = (nodes[sn][0] if sn != NONE else None, si, gen)  # node numbers shift as nodes come and go
        role = slot.role
        if role is not None and role.key == key:
            return
        if self.freezer is not None and slot.frozen:
            # the freeze was for a hand-over to the old secondary: it is void now (the controller asks
            # again if it still wants one); processing goes on at once, not after the lease
            self.log.warning("pair %d: freeze dropped, its secondary changed", slot.pair)
            self.freezer.thaw(slot)
        if self.globals is not None:  # a batch waiting for its global results goes out under the old role
            self.globals.finish_now(slot)
        core = None
        if role is not None:
            slot.role = None
            core = role.core
            staged = role.close()
            if sn == NONE:  # no redundancy left: what waited for the old secondary's vote goes now
                for t, (records, forward, _) in staged.items():
                    self.release_committed(slot.pair, t, records, forward)
                return
            core.secondary_lost()
            role_staged = staged
        else:
            role_staged = {}
        if sn == NONE:
            return
        taken_over = slot.taken_core is not None
        if core is None:
            core = slot.taken_core or PrimaryReplicator(
                0, slot.pair, has_secondary=False, last_batch=int(self.record.committed[slot.pair]))
            slot.taken_core = None
        endpoint = endpoint_of(nodes[sn][2], si)
        slot.role = PrimaryRole(self, slot, core, endpoint, key)
        slot.role.staged.update(role_staged)
        if slot.out.n:  # processed already: the sync's state includes it, so it must be a batch before the sync
            self.release(slot)
            if self.globals is not None:
                self.globals.finish_now(slot)
        slot.role.start_sync(max(gen, core.epoch + 1))
        slot.session_epoch = slot.role.core.epoch  # batches from here on are replayable: named after it
        if taken_over:
            failpoint("worker_takeover_sync")   # tests: die with the sync after a take-over just sent

    def take_over(self, pair: int, decision: int, n_pairs: int) -> PairSlot | None:
        """Become the primary of ``pair`` from the replica kept here (``takeover``); None if there is none."""
        return TakeOver(self, pair, decision, n_pairs).run()

    def retire(self, slot: PairSlot) -> list[np.ndarray]:
        """The routes moved ``slot``'s pair away: keep its counters, drop its state and output.

        Replicating, what it has not processed goes on to the pair's new primary (``forward.py``):
        what it held while frozen for a hand-over and what its ordering kept waiting for a gap (their
        copies may be at an older secondary); whatever still reaches it later goes by ``on_strays``.
        Returns what it forwarded."""
        self.load_base[slot.pair] = self.load_base.get(slot.pair, 0) + slot.count["processed"]
        unprocessed = []
        if self.forwarder is not None:
            unprocessed = [slot.ordering.take_pending(), *(slot.held if slot.frozen else []),
                           *(slot.move_out.held if slot.move_out is not None else [])]
            unprocessed = [u for u in unprocessed if len(u)]
            if unprocessed:
                self.forwarder.forward(slot.pair, unprocessed)
            self.freezer.forget(slot.pair)
            self.mover.forget(slot.pair)
        if slot.role is not None:
            slot.role.close()
        if slot.waiting is not None:
            if self.gclient is not None:
                self.gclient.forget(slot.waiting)
            self.log.warning("pair %d moved away with a batch of %d packets waiting for its global results; "
                             "dropped", slot.pair, len(slot.waiting.records))
        for name in SLOT_COUNTERS:
            self.retired[name] += slot.count[name]
        for name, attr in ORDERING_COUNTERS.items():
            self.retired[name] += getattr(slot.ordering, attr)
        for name, value in slot.nf.stats.items():
            self.retired_nf[name] = self.retired_nf.get(name, 0) + value
        self.log.warning("pair %d moved away; %d packets unreleased dropped", slot.pair, slot.out.n)
        return unprocessed

    # -- input -------------------------------------------------------------------------------------------
    def pull_duplicates(self) -> int:
        """Buffer every copy waiting for the pairs this worker is the secondary of (independent of its
        own output: a take-over must see them all)."""
        taken = 0
        for ring in self.dup_inputs:
            while len(view := ring.peek(1024)):   # a socket's reader gives one message per peek
                self.on_duplicates(view)
                ring.release(len(view))
                taken += len(view)
        return taken

    def on_duplicates(self, records: np.ndarray) -> None:
        self.count["duplicates"] += len(records)
        for p, part in by_pair(records):
            slot = self.slots.get(p)
            if slot is not None:  # a copy sent before this worker took the pair over: it is input now
                part = part.copy()
                part["dup"] = 0
                slot.process(part)
            elif self.secondaries is not None:
                self.secondaries.on_duplicates(p, part)

    def pull(self, duplicates: bool = True) -> int:
        """Move up to the output buffers' room from the input rings through the NF (and the copies)."""
        taken = self.pull_duplicates() if self.dup_inputs and duplicates else 0
        room = self.room()
        n_in = len(self.inputs)
        for k in range(n_in):
            if room <= 0:
                break
            ring = self.inputs[(self._next_input + k) % n_in]
            view = ring.peek(room)
            if len(view) == 0:
                continue
            self.dispatch(view)
            ring.release(len(view))
            taken += len(view)
            room = self.room()
        self._next_input = (self._next_input + 1) % n_in
        return taken

    def room(self) -> int:
        """Packets the output buffers can take now (the paper's step 1)."""
        return min((s.out.room - s.held_n for s in self.slots.values()), default=1024)

    def dispatch(self, arrived: np.ndarray) -> None:
        if arrived["dup"].any():  # copies come through the dup rings; one on this path is still a copy
            dup = arrived["dup"] != 0
            self.on_duplicates(arrived[dup])
            arrived = arrived[~dup]
        if len(self.slots) == 1:
            (p, slot), = self.slots.items()
            if (arrived["pair"] == p).all():  # the common case: one pair, nothing to split
                slot.process(arrived)
                return
        strays = []
        for p, part in by_pair(arrived):
            slot = self.slots.get(p)
            if slot is not None:
                slot.process(part)
            else:
                strays.append((p, part))
        if strays:
            self.on_strays(strays)

    def on_strays(self, strays: list[tuple[int, np.ndarray]]) -> None:
        """Packets for pairs this worker is not the primary of, in the routes it acts on.

        First take up the routes in shared memory (a change may have come since the round began:
        then they are its own now). Replicating, a packet of a pair another worker serves goes on
        to it (``forward.py``): sent here by routes older than the sender's or newer than ours, or
        late after a hand-over from here. Without a route set to read (the supervisor is writing
        one), a pair this worker is the secondary of keeps it with the replica: the switch has the
        routes that make this worker its primary and this worker does not yet, and the take-over
        processes it.
        """
        self.refresh()
        for p, part in strays:
            slot = self.slots.get(p)
            if slot is not None:
                slot.process(part)
            elif self.forwarder is not None and self.forwarder.forward(p, part, unless_to=self.me()):
                if self.secondaries is not None and p in self.secondaries.links:
                    # its secondary here keeps a copy too: the copy the io made went to the pair's
                    # older secondary (this worker handed the pair over a moment ago: takeover.fresh)
                    self.secondaries.on_duplicates(p, copies_of([part]))
            elif self.secondaries is not None and p in self.secondaries.links:
                self.secondaries.on_duplicates(p, part)
                self.count["early"] += len(part)
            else:
                self.count["not_mine"] += len(part)

    def divert(self, slot: PairSlot, arrived: np.ndarray) -> np.ndarray:
        """``arrived`` without the packets whose bucket the routes give another pair, which go to that
        pair (``forward_moved``): late after a bucket move from here, or a replica's buffered copies of
        what its old primary held. Buckets this pair just imported are its own whatever the routes here
        say (the io may have taken up the switch before this worker)."""
        bp = self.route_tables.bucket_pair
        buckets = bucket_of(arrived["key_hash"], len(bp))
        owner = bp[buckets]
        away = owner != slot.pair
        if not away.any():
            return arrived
        guarded = slot.ordering.guarded
        if guarded is not None:
            away &= ~guarded[buckets]
            if not away.any():
                return arrived
        for to in np.unique(owner[away]).tolist():
            self.forward_moved(to, [arrived[away & (owner == to)]])
        return arrived[~away]

    def forward_moved(self, pair: int, parts: list[np.ndarray]) -> None:
        """Packets of buckets that moved to ``pair``: to its primary, with copies for its secondary
        (they went to the old pair's secondary when they were stamped)."""
        self.count["move_forwarded"] += sum(len(p) for p in parts)
        self.forwarder.forward(pair, parts, copies=True)

    def me(self) -> tuple[str, int]:
        return (self.node_id, self.index)

    # -- output ------------------------------------------------------------------------------------------
    def release(self, slot: PairSlot) -> None:
        if slot.has_global_ops() and self.globals is not None:
            self.globals.hold(slot)
            return
        batch, inputs = slot.take_output()
        self.release_batch(slot, batch, inputs)

    def release_batch(self, slot: PairSlot, batch: np.ndarray, inputs: np.ndarray | None) -> None:
        verdict = batch["verdict"]
        forward = None if not verdict.any() else np.flatnonzero(verdict == FORWARD)
        n_forward = len(batch) if forward is None else len(forward)
        if slot.role is not None:
            slot.role.submit(batch, forward, inputs)  # leaves for the egress on the 2PC's Release
        else:
            if self.direct is not None and not self.cfg.nf.replicate:
                self.send_direct(batch if forward is None else batch[forward])
            else:
                self.push_egress(batch, forward)
            self.count["released"] += n_forward
            if slot.pair == self.first_release_of and n_forward:
                self.count["takeover_release_ns"], self.first_release_of = time.monotonic_ns(), -1
        c = self.count
        c["dropped_by_nf"] += len(batch) - n_forward
        c["batches"] += 1

    def release_committed(self, pair: int, batch_id: int, records: np.ndarray, index: np.ndarray | None) -> None:
        """Release a decided batch so that a crash at any point is finished or undone by the supervisor.

        Stage the output past the egress ring's tail, write the commit record
        (pair, batch, tail after it), publish the tail, mark it done (see
        ``commit_record``). A batch larger than the ring goes out in parts,
        without that guarantee.
        """
        n = len(records) if index is None else len(index)
        while True:
            end = self.egress.stage(records, index)
            if end is not None:
                break
            if n > self.egress.n_slots or self.stop:
                self.record.releasing(pair, batch_id, int(self.egress.pushed))
                self.push_egress(records, index)
                self.record.released(pair, batch_id)
                self.last_release_end = int(self.egress.pushed)
                self.count["released"] += n
                return
            self.count["egress_waits"] += 1
            time.sleep(0.0002)
        self.record.releasing(pair, batch_id, end)
        self.egress.publish_to(end)
        self.record.released(pair, batch_id)
        self.send_egress()
        self.last_release_end = end
        self.count["released"] += n
        if pair == self.first_release_of and n:
            self.count["takeover_release_ns"], self.first_release_of = time.monotonic_ns(), -1
            self.publish()   # drills time the take-over from this counter: show it at once

    def send_direct(self, records: np.ndarray) -> None:
        """Send an unreplicated batch's output on this worker's own socket (VXLAN, like the io's egress)."""
        for start in range(0, len(records), EGRESS_BURST):   # the sink's staging block holds a burst
            self.count_sent(self.direct.send(records[start: start + EGRESS_BURST]))

    def send_egress(self) -> None:
        """Send what this worker's egress ring holds, releasing each datagram as it leaves (or, for a
        shm:// sink, wake the io to do it).

        The worker is the ring's only consumer while it lives (the io's egress skips workers' rings
        when they send for themselves); a kill here repeats at most one datagram, and the supervisor
        sends what is left before it reports the death (``Supervisor.finish_releases``).
        """
        if self.direct is None:
            self.egress_bell.ring()
        else:
            self.count_sent(send_ring(self.direct, self.egress))

    def count_sent(self, result: tuple[int, int, int]) -> None:
        sent, errors, refused = result
        c = self.count
        c["egress_sent"] += sent
        c["egress_send_errors"] += errors
        c["egress_icmp_refused"] += refused

    def push_egress(self, records: np.ndarray, index: np.ndarray | None) -> None:
        """Hand a batch (or ``records[index]``) to the egress sender; wait, never drop, while its ring is full."""
        total = len(records) if index is None else len(index)
        done = 0
        while done < total:
            if index is None:
                done += self.egress.push_some(records[done:])
            else:
                done += self.egress.push_some(records, index[done:])
            self.send_egress()
            if done < total:
                self.count["egress_waits"] += 1
                if self.stop:
                    return
                time.sleep(0.0002)

    def publish(self) -> None:
        c, slots = self.count, list(self.slots.values())
        for name in SLOT_COUNTERS:
            c[name] = self.retired[name] + sum(s.count[name] for s in slots)
        for name, attr in ORDERING_COUNTERS.items():
            c[name] = self.retired[name] + sum(getattr(s.ordering, attr) for s in slots)
        c["pending"] = sum(s.ordering.pending_count for s in slots)
        c["global_waiting"] = sum(s.waiting is not None for s in slots)
        c["global_held"] = sum(s.held_n for s in slots)
        c["flows"] = sum(len(s.table) for s in slots)
        c["pairs"] = len(slots)
        if self.remote is not None:
            c["remote_messages"], c["remote_packets"] = self.remote.messages, self.remote.packets
            c["remote_bad_frames"] = self.remote.bad_frames
        if self.copies is not None:
            c["copies_messages"], c["copies_bad_frames"] = self.copies.messages, self.copies.bad_frames
        roles = [s.role for s in slots if s.role is not None]
        c["repl_committed"] = int(self.record.committed.max())
        c["repl_staged"] = sum(len(r.staged) for r in roles)
        c["repl_in_flight"] = sum(r.in_flight() for r in roles)
        if self.secondaries is not None:
            c.update(self.secondaries.counters())
            links = [r.link for r in roles] + list(self.secondaries.links.values())
            for name in ("sent", "received", "dropped"):
                c[f"repl_{name}"] = self.retired.get(f"repl_{name}", 0) + sum(getattr(k, name) for k in links)
        self.dirty = False
        self.next_publish = time.monotonic_ns() + PUBLISH_NS
        nf = dict(self.retired_nf)
        for s in slots:
            for name, value in s.nf.stats.items():
                nf[name] = nf.get(name, 0) + value
        self.stats.values[self._published_at] = [
            c[name] if name in c else nf.get(name[3:], 0) for name in self._published
        ]
        for s in slots:
            self.load.values[s.pair] = self.load_base.get(s.pair, 0) + s.count["processed"]

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Wait for work, then do all of it (NAPI-like: a busy worker polls, an idle one sleeps).

        One wait set (``runtime/waitset.py``) holds the input bell (a FIFO: see ``runtime/ring/fdbell.py``)
        and every socket but the copies' (2PC, global state, other nodes' packets), so a packet, a vote
        or a Raft result wakes the worker at once.
        It sleeps until then or until the next timer that matters: a flush deadline, a gap, a 2PC
        tick (only while something is in flight), a global retry, housekeeping. Nothing is polled
        on a timer while idle, and no timer is below a millisecond (a poll's unit).
        """
        timeout_ms = 0
        count = self.count
        costs = self.costs   # what each phase of a round costs, by what woke it (DEFT_ROUND_COSTS; else no-ops)
        while not self.stop:
            count["rounds"] += 1
            if timeout_ms:
                count["sleeps"] += 1
            costs.begin()
            ready = self.wait(timeout_ms)
            costs.woke(self.woke_by if timeout_ms else "busy")
            woke = now = time.monotonic_ns()
            self.refresh()
            costs.mark("routes")
            # copies first: a Prepare that came with them is applied at once, not staged to wait
            moved = self.pull_duplicates() if self.dup_inputs else 0
            costs.mark("copies")
            if ready:
                self.on_ready(ready)
            for role in self.roles():
                role.note_sent(self.egress.popped)
            if self.freezer is not None and not self.fencing:
                self.freezer.poll(now)
                self.mover.poll(now)
            costs.mark("messages")
            if not self.fencing:
                moved += self.pull(duplicates=False)
            costs.mark("input")
            now = time.monotonic_ns()
            released = False
            for slot in list(self.slots.values()):
                if self.should_release(slot, now):
                    self.release(slot)
                    released = True
            costs.mark("release")
            self.timers(now)
            costs.mark("timers")
            if ready:
                self.dirty = True
            if moved or released:
                self.dirty = True
            if (moved or released) and self.room() > 0 and not self.fencing and not self.inputs_empty():
                timeout_ms = 0   # input left that there is room for now: take it before sleeping
            else:
                # anything new rings the bell or a polled socket, so the poll returns at once for it
                # (a round to find that out was a quarter of the rounds at 200 pps). A publish of dirty
                # counters is one of the timers
                timeout_ms = self.next_timeout_ms(now)
            costs.mark("plan")
            count["busy_ns"] += time.monotonic_ns() - woke   # the load the controller sees (controller/load.py)

    def roles(self) -> list:
        return [s.role for s in self.slots.values() if s.role is not None]

    def wait(self, timeout_ms: int) -> set:
        """Sleep up to ``timeout_ms`` for the bell or a socket; the sockets that have messages."""
        socks = self.watched_sockets()
        if not socks:
            if timeout_ms:
                self.count_wake(self.bell.wait(timeout_ms / 1000), set())
            return set()
        if socks != self._polled:  # roles changed: a new wait set (rare), not one per sleep
            self._waitset = WaitSet()
            self._waitset.add(self.bell.fileno())
            for sock in socks:
                self._waitset.add(sock)
            self._polled = socks
        if self.remote is not None:
            # other nodes' packets wake us only when we would take them: a message left in the
            # socket (no room) must not make every poll return at once
            self._waitset.watch(self.remote.sock, self.remote.buffered == 0 and self.room() > 0 and not self.fencing)
        if self.gclient is not None:
            # the replica's updates (every entry any worker of the cluster commits) wake us only while
            # none of our own entries is in flight: then they come in with its answer. Woken for each,
            # the six workers of a 3-node cluster at 1 kpps and 1 update per call used 0.58-0.60 cores,
            # 0.52 since (side by side, alternating; the latency did not move: the Raft path is CPU-bound)
            self._waitset.watch(self.gclient.sub, not self.gclient.requests)
        if self.copies is not None:
            # copies wake us only while a Prepare waits for some (it came first: 1-2 % of batches at
            # 1-3 kpps); else the Prepare that needs them does, and the round drains them first
            self._waitset.watch(self.copies.sock, self.secondaries is not None and self.secondaries.needs_tick())
        ready, fds = self._waitset.wait(timeout_ms)
        bell = bool(fds)
        if bell:
            self.bell.drain()
        if timeout_ms:
            self.count_wake(bell, ready)
        return ready

    def count_wake(self, bell: bool, ready: set) -> None:
        """Why a sleep ended (the first reason that applies): counted, and kept in ``woke_by``."""
        if bell:
            why = "bell"
        elif not ready:
            why = "timer"
        elif self.remote is not None and self.remote.sock in ready:
            why = "packets"
        elif self.secondaries is not None and self.secondaries.router.sock in ready:
            why = "replica"
        elif self.copies is not None and self.copies.sock in ready:
            why = "copies"
        elif any(r.link.sock in ready for r in self.roles()):
            why = "votes"
        else:
            why = "global"
        self.count[_WOKE[why]] += 1
        self.woke_by = why

    def watched_sockets(self) -> list:
        socks = [] if self.remote is None else [self.remote.sock]
        if self.secondaries is not None:
            socks.append(self.secondaries.router.sock)
            socks += [r.link.sock for r in self.roles()]
        if self.copies is not None:
            socks.append(self.copies.sock)
        if self.gclient is not None:
            socks += [self.gclient.sock, self.gclient.sub]
        return socks

    def on_ready(self, ready: set) -> None:
        """Messages arrived: 2PC votes for the primary roles, Prepares and Commits for the replicas,
        global results and replica updates."""
        for role in self.roles():
            if role.link.sock in ready:
                role.poll()
        if self.secondaries is not None and self.secondaries.router.sock in ready:
            self.secondaries.poll()
        if self.globals is not None and (self.gclient.sock in ready or self.gclient.sub in ready):
            self.globals.poll()

    def timers(self, now: int) -> None:
        """What is due: 2PC ticks (while needed), global retries, gaps, expiry, counters."""
        if self.secondaries is not None and now >= self.next_tick:
            roles = [r for r in self.roles() if r.needs_tick()]
            if roles or self.secondaries.needs_tick():
                for role in roles:
                    role.tick()
                self.secondaries.tick()
            self.next_tick = now + TICK_NS
        for role in self.roles():
            role.maybe_commit(now)
        if self.globals is not None and self.gclient.requests:
            self.globals.poll()
        if self.fencing:   # a take-over goes on once its fence answered
            for takeover in list(self.fencing.values()):
                self.dirty |= takeover.poll_fence(time.monotonic())
        self.housekeeping(now)
        if now >= self.next_publish and self.dirty:
            self.publish()

    def next_timeout_ms(self, now: int) -> int:
        """Milliseconds until the next timer that matters (at least 1, at most 1000)."""
        due = now + 1_000_000_000
        for slot in self.slots.values():
            # a flush deadline matters only if the batch could go then: while the 2PC window is
            # closed the Vote that opens it wakes us (a timer would wake us every ms until then)
            if slot.out.n and slot.waiting is None and (slot.role is None or slot.role.window_open()):
                due = min(due, slot.out.deadline)
            if slot.ordering.waiting_since:  # a gap may time out before anything arrives
                due = min(due, self.next_gap_check)
            if slot.frozen:   # its freeze lapses then (freeze.py)
                due = min(due, slot.frozen_until)
        if self.mover is not None:   # a hold or a guard of a bucket move ends
            at = self.mover.next_due()
            if at is not None:
                due = min(due, at)
        if self.secondaries is not None and (self.secondaries.needs_tick()
                                             or any(r.needs_tick() for r in self.roles())):
            due = min(due, self.next_tick)
        for role in self.roles():
            at = role.commit_due()
            if at is not None:
                due = min(due, at)
        if self.gclient is not None and self.gclient.requests:
            due = min(due, int(min(p.retry_at for p in self.gclient.requests.values()) * 1e9))
        due = min(due, self.next_expiry)
        if self.dirty:   # rounds that work publish once next_publish is past; this wakes only an idle worker
            due = min(due, self.next_publish + PUBLISH_IDLE_NS)
        return max(1, -(-(due - now) // 1_000_000))

    def poll_replication(self, now: int) -> None:
        """Everything the replication sockets have, and a tick (tests drive the worker with this)."""
        for role in self.roles():
            role.poll()
        self.secondaries.poll()
        self.timers(now)

    def housekeeping(self, now: int) -> None:
        if now >= self.next_gap_check:
            self.next_gap_check = now + 10_000_000
            for slot in self.slots.values():
                slot.skip_gaps(now, self.gap_ns)
        if now >= self.next_expiry:  # once a second: forget idle flows, trim the replicas' buffers
            self.next_expiry = now + 1_000_000_000
            for slot in self.slots.values():
                slot.expire_idle(self.idle_ns)
            if self.secondaries is not None:
                self.secondaries.trim()
                self.drop_shadows(now)
            self.dirty = True

    def drop_shadows(self, now: int) -> None:
        """A hand-over's shadow goes once the new primary's sync here is decided (or after a while)."""
        for p, shadow in list(self.shadows.items()):
            link = self.secondaries.links.get(p)
            if link is None or link.core.synced or now - shadow.since_ns > SHADOW_NS:
                del self.shadows[p]

    def should_release(self, slot: PairSlot, now: int) -> bool:
        """Full, past the flush deadline, or idle; with replication, also a free 2PC window.

        Replicating, "idle" means idle with no batch in flight: while one is being
        committed the next one keeps filling (group commit), so a 2PC round trip
        carries as many packets as arrived during it.
        """
        if slot.out.n == 0 or slot.waiting is not None:
            return False
        if slot.frozen:
            # frozen for a hand-over: what it processed goes out at once, then nothing more
            return self.freezer.may_release(slot.pair) and (slot.role is None or slot.role.window_open())
        role = slot.role
        if role is not None and not role.window_open():
            return False
        if slot.out.due(now) or (self.mover is not None and self.mover.needs_flush(slot)):
            return True
        if not (self.flush_on_idle and self.inputs_empty()):
            return False
        return role is None or role.in_flight() == 0

    def inputs_empty(self) -> bool:
        return all(len(r) == 0 for r in self.inputs)

    def close(self) -> None:
        self.costs.dump()
        for slot in self.slots.values():
            if slot.role is not None:
                slot.role.close()
        if self.secondaries is not None:
            self.secondaries.close()
        if self.gclient is not None:
            self.gclient.close()
        for r in self.inputs + self.dup_inputs:
            r.close()
        if self.forwarder is not None:
            self.forwarder.close()
        # every socket is closed by now: a context terminated with one still open waits for it for ever
        # (the forwarder's, closed after this, hung every worker that had handed a pair over until the
        # supervisor killed it 3 s into its stop)
        close_context(self.zctx)
        self.egress.close()
        if self.direct is not None:
            self.direct.close()
        if self.freezer is not None:
            self.freezer.box.close()
            self.mover.box.close()
        self.record.close()
        self.routes.close()
        self.stats.close()
        self.load.close()


SHADOW_NS = 10_000_000_000   # a sync that takes longer than this has other trouble


@dataclasses.dataclass
class Shadow:
    table: FlowTable
    next_expected: dict[int, int]
    since_ns: int


def copies_of(parts: list[np.ndarray]) -> np.ndarray:
    from deft.runtime.worker.forward import as_packets

    records = as_packets(parts)
    records["dup"] = 1
    return records


def by_pair(records: np.ndarray):
    """(pair, records of that pair) in the order pairs first appear; one pair costs no copy."""
    pairs = records["pair"]
    first = int(pairs[0]) if len(pairs) else 0
    if len(pairs) == 0 or (pairs == first).all():
        if len(pairs):
            yield first, records
        return
    for p in np.unique(pairs).tolist():
        yield p, records[pairs == p]


def counter_names(kind: str) -> list[str]:
    return COUNTERS + [f"nf.{c}" for c in nf_class(kind).counters]


def run(topo: Topology, index: int, stop, log, restarted: bool = False) -> None:
    worker = Worker(topo, index, stop, log, restarted)
    log.info("NF worker %d (%s) up%s", index, topo.config.nf.kind, " after a restart" if restarted else "")
    worker.stats.set("ready", 1)
    try:
        worker.run()
    finally:
        worker.stats.set("ready", 0)
        worker.close()
