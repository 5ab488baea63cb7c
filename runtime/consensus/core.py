"""RaftCore: the Raft algorithm as a deterministic state machine with no I/O.

Inputs are ``tick()``, ``step(msg)``, ``propose(data)`` (and ``campaign()`` for
tests); the output is a ``Ready`` batch the driver must act on, then hand back
with ``advance(rd)``. There are no sockets, threads, clocks or global random
here: time is counted in ticks and election jitter comes from the injected
``random.Random``, so one seed replays a run exactly (etcd-io/raft's shape).

Implemented: leader election with randomized timeouts, pre-vote and
check-quorum; log replication with batching (at most ``max_entries_per_msg``
per append, sent as soon as proposed) and pipelining (optimistic next index,
at most ``max_inflight`` unacknowledged appends); commit by counting only
entries of the current term (Figure 8); apply via ``Ready.committed``;
snapshots (``compact``) and InstallSnapshot; single-server membership
changes with learners (``propose_conf_change``); leadership transfer.
The per-role step functions live in ``roles``, elections in ``election``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from deft.runtime.consensus import election, reconfig, roles
from deft.runtime.consensus.config import Config
from deft.runtime.consensus.errors import InvalidRequest, InvariantViolation, NotLeader, NotReady
from deft.runtime.consensus.log import RaftLog
from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.messages import (Entry, EntryKind, HardState, Message, MsgType,
                                             Snapshot)
from deft.runtime.consensus.progress import Progress
from deft.runtime.consensus.quorum import VoteResult, committed_index, vote_result
from deft.runtime.consensus.ready import Ready, ReadState
from deft.runtime.consensus.role import Role
from deft.runtime.consensus.storage_api import Storage


class RaftCore:
    """One Raft member. Not thread-safe: one driver loop owns it."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        self.config = config
        self.id = config.node_id
        self.rng = rng
        hs, snap, entries = storage.load()
        #: latest snapshot (sent to followers that need compacted entries)
        self.snapshot = snap
        self._unstable_snapshot: Snapshot | None = None
        off, off_term = (snap.index, snap.term) if snap else (0, 0)
        self.log = RaftLog(entries, commit=max(hs.commit, off), offset=off, offset_term=off_term)
        self._base_membership = snap.membership if snap and snap.membership else Membership.of(
            config.peers, config.learners)
        self.membership = reconfig.membership_at(self, self.log.last_index())
        self._membership_key: tuple[Entry | None, Membership] | None = None
        self.term = hs.term
        self.vote = hs.vote
        if self.log.last_term() > self.term:
            # Entries were made durable before the hard state that raised the
            # term (a crash between the two writes); no message depended on it.
            self.term, self.vote = self.log.last_term(), None
        self._prev_hs = hs  # what storage holds; any difference goes in the next Ready
        self.msgs: list[Message] = []
        self._pending: Ready | None = None
        self._unsent_proposals = False
        self.lead: int | None = None
        self.role = Role.FOLLOWER
        self.votes: dict[int, bool] = {}
        self.prs: dict[int, Progress] = {}
        self.lead_transferee: int | None = None
        #: ReadIndex rounds in flight, oldest first: context -> (index, voters that acked, asker)
        self.pending_reads: dict[bytes, tuple[int, set[int], int]] = {}
        self.read_states: list[ReadState] = []
        #: contexts this follower forwarded to its leader and still awaits
        self.forwarded_reads: set[bytes] = set()
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_tick
        self._tick: Callable[[], None] = self._tick_election
        self._step: Callable[[RaftCore, Message], None] = roles.step_follower
        self.become_follower(self.term, None)

    # -- public API ----------------------------------------------------------
    @property
    def leader_id(self) -> int | None:
        return self.lead

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()
        reconfig.check_removed(self)

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled), as an election timeout would."""
        if self.role is not Role.LEADER and self.promotable():
            election.hup(self)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry; return its index. Raises NotLeader elsewhere.

        Appends for it go out in the next Ready (with everything else proposed
        since the last one, at most ``max_entries_per_msg`` per message). It is
        committed when it appears in ``Ready.committed``, which may never
        happen if leadership is lost: clients retry with the same session id.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.id, self.lead)
        if self.lead_transferee is not None:
            raise NotLeader(self.id, self.lead_transferee)  # handing over: retry there
        index = self._append_entry(data, EntryKind.NORMAL)
        # Sent at the next ready(): everything proposed until then shares appends
        # (group commit) instead of one message per proposal.
        self._unsent_proposals = True
        return index

    def propose_or_forward(self, data: bytes) -> int | None:
        """``propose`` on the leader (its index); on a follower, forward ``data`` to the leader (None).

        A forwarded proposal (MsgProp, as etcd-raft's) is appended by the leader
        if it still leads and is not handing over; otherwise it is dropped
        silently, like any message: the client learns the outcome only by
        seeing its command applied, and retries (with the same session seq)
        after a timeout. Raises NotLeader when no leader is known.
        """
        if self.role is Role.LEADER:
            return self.propose(data)
        if self.lead is None or self.role is not Role.FOLLOWER:
            raise NotLeader(self.id, self.lead)
        self.send(Message(MsgType.PROP, self.id, self.lead, self.term, entries=(Entry(0, 0, data),)))
        return None

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to`` (Raft dissertation §3.10).

        Proposals are refused (NotLeader naming ``to``) while ``to`` catches up;
        once its log matches, it is told to campaign at once (TIMEOUT_NOW), and
        voters skip their lease check for it. Abandoned after an election timeout.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.id, self.lead)
        if to == self.id or to not in self.membership.voters:
            raise InvalidRequest(f"cannot transfer leadership from {self.id} to {to}")
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        roles.maybe_send_timeout_now(self, to)
        roles.send_all(self, to, send_if_empty=True)

    def read_index(self, context: bytes) -> None:
        """Start a linearizable read without a log write (ReadIndex, dissertation §6.4).

        The leader notes its commit index, then confirms with a heartbeat round
        that a majority still follows it; the read appears in
        ``Ready.read_states`` and may be served from the local state machine
        once ``applied >= index``. A follower forwards the request to its
        leader and gets the confirmed index back, so it can serve the read
        itself. ``context`` identifies the read and must be unique across the
        cluster (include the node id). Raises NotLeader when no leader is
        known, NotReady on a leader that has not yet committed an entry of its
        term. Reads are dropped silently if leadership changes: clients retry.
        """
        if self.role is not Role.LEADER:
            if self.lead is None or self.role is not Role.FOLLOWER:
                raise NotLeader(self.id, self.lead)
            self.forwarded_reads.add(context)
            self.send(Message(MsgType.READ_INDEX, self.id, self.lead, self.term, context=context))
            return
        if not roles.start_read(self, context, self.id):
            raise NotReady("leader has not committed an entry of its term yet")

    def step(self, m: Message) -> None:
        """Process one message addressed to this node."""
        if m.dst != self.id:
            raise InvariantViolation(f"node {self.id} got a message for {m.dst}")
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE) and election.in_lease(self) \
                    and not m.transfer:
                return  # our leader is alive: ignore a disruptive candidate
            if m.type is MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term we would campaign in
            else:
                lead = m.src if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP) else None
                self.become_follower(m.term, lead)
        elif m.term < self.term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP) and (
                    self.config.check_quorum or self.config.pre_vote):
                # A stale leader cut off by pre-vote/check-quorum would never
                # learn the new term otherwise; this answer makes it step down.
                self.send(Message(MsgType.APP_RESP, self.id, m.src, self.term))
            elif m.type is MsgType.PRE_VOTE:
                self.send(Message(MsgType.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
            return
        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            election.handle_vote_request(self, m)
        else:
            self._step(self, m)
        reconfig.sync_membership(self)
        reconfig.check_removed(self)

    def _flush_proposals(self) -> None:
        if self._unsent_proposals:
            self._unsent_proposals = False
            if self.role is Role.LEADER:
                roles.bcast_append(self, send_if_empty=False)

    def has_ready(self) -> bool:
        self._flush_proposals()
        lg = self.log
        if self.msgs or self._unstable_snapshot is not None or self.read_states \
                or lg.stable < lg.last_index() or lg.committed > lg.applied:
            return True
        return self.hard_state() != self._prev_hs

    def ready(self) -> Ready | None:
        """The next batch of work, or None if there is none. Call ``advance`` before the next."""
        if self._pending is not None:
            raise InvariantViolation("ready() called again before advance()")
        if not self.has_ready():
            return None
        hs = self.hard_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hs else None,
            entries=tuple(self.log.unstable_entries()),
            committed=tuple(self.log.next_committed()),
            messages=tuple(self.msgs),
            snapshot=self._unstable_snapshot,
            read_states=tuple(self.read_states),
        )
        self.msgs = []
        self.read_states = []
        self._pending = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Tell the core that ``rd`` was persisted, sent and applied."""
        if rd is not self._pending:
            raise InvariantViolation("advance() with a Ready that is not the pending one")
        self._pending = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if self._unstable_snapshot is rd.snapshot:
                self._unstable_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.index)
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed:
            self.log.applied_to(rd.committed[-1].index)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of applied ``index`` and drop the log up to it.

        The driver stores the returned snapshot with ``storage.compact``. Followers
        that need dropped entries get the snapshot instead (InstallSnapshot).
        """
        if index > self.log.applied:
            raise InvalidRequest(f"snapshot at {index} beyond applied {self.log.applied}")
        if self.snapshot is not None and index <= self.snapshot.index:
            return self.snapshot
        term = self.log.term(index)
        if term is None:
            raise InvalidRequest(f"no entry at {index} to snapshot")
        membership = reconfig.membership_at(self, index)
        self.log.compact(index)
        self._base_membership = membership
        self.snapshot = Snapshot(index, term, data, membership)
        return self.snapshot

    def restore(self, snap: Snapshot) -> None:
        """Follower: replace the log with a leader's snapshot (used by roles)."""
        self.log.restore(snap.index, snap.term)
        self.snapshot = self._unstable_snapshot = snap
        if snap.membership is not None:
            self._base_membership = snap.membership

    def status(self) -> dict[str, object]:
        return {"id": self.id, "role": self.role.value, "term": self.term, "vote": self.vote,
                "lead": self.lead, "commit": self.log.committed, "applied": self.log.applied,
                "last_index": self.log.last_index()}

    # -- used by roles -------------------------------------------------------
    def send(self, m: Message) -> None:
        self.msgs.append(m)

    def others(self) -> list[int]:
        """Every other member (learners included): whom a leader replicates to."""
        return [p for p in self.membership.members if p != self.id]

    def promotable(self) -> bool:
        """Only voters campaign; learners and non-members wait."""
        return self.id in self.membership.voters

    def maybe_commit(self) -> bool:
        idx = committed_index(self.membership.voters, {p: pr.match for p, pr in self.prs.items()})
        return self.log.maybe_commit(idx, self.term)

    def poll(self, voter: int, granted: bool) -> VoteResult:
        self.votes.setdefault(voter, granted)
        return vote_result(self.membership.voters, self.votes)

    # -- membership --------------------------------------------------------------
    def propose_conf_change(self, new: Membership) -> int:
        """Append a configuration change; it takes effect here at once (see membership.py).

        Raises NotLeader, or InvalidRequest if the change is not a single-voter
        step, the previous change is not committed yet, or this leader has not
        yet committed an entry of its own term.
        """
        if self.role is not Role.LEADER or self.lead_transferee is not None:
            raise NotLeader(self.id, self.lead_transferee or self.lead)
        if self.log.term(self.log.committed) != self.term:
            raise InvalidRequest("leader has not committed an entry of its term yet")
        if self.log.conf_indexes and self.log.conf_indexes[-1] > self.log.committed:
            raise InvalidRequest("the previous configuration change is not committed yet")
        self.membership.check_single_change(new)
        index = self._append_entry(new.encode(), EntryKind.CONF)
        self._unsent_proposals = True
        reconfig.sync_membership(self)
        return index

    # -- role changes ----------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            if term < self.term:
                raise InvariantViolation(f"term going back from {self.term} to {term}")
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.config.election_tick + self.rng.randrange(
            self.config.election_tick)
        self.votes = {}
        self.prs = {}
        self.lead_transferee = None
        self.pending_reads = {}
        self.forwarded_reads = set()  # answers from an earlier term are dropped anyway

    def become_follower(self, term: int, lead: int | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = roles.step_follower
        self._tick = self._tick_election

    def become_pre_candidate(self) -> None:
        # Unlike a candidate, a pre-candidate keeps its term and vote: a node
        # that cannot win (partitioned, stale log) disrupts nobody.
        if self.role is Role.LEADER:
            raise InvariantViolation("leader cannot become pre-candidate")
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._step = roles.step_candidate
        self._tick = self._tick_election

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantViolation("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = roles.step_candidate
        self._tick = self._tick_election

    def become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise InvariantViolation(f"{self.role.value} cannot become leader")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step = roles.step_leader
        self._tick = self._tick_heartbeat
        last = self.log.last_index()
        for p in {*self.membership.members, self.id}:
            self.prs[p] = Progress(match=0, next=last + 1, max_inflight=self.config.max_inflight)
        self.prs[self.id].match = last
        self.prs[self.id].recent_active = True
        # Entries of earlier terms commit only via an entry of this term (Figure 8).
        self._append_entry(b"", EntryKind.NOOP)
        roles.bcast_append(self, send_if_empty=True)

    def _append_entry(self, data: bytes, kind: EntryKind) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, data, kind)])
        self.prs[self.id].maybe_update(index)
        self.maybe_commit()
        return index

    # -- ticks -----------------------------------------------------------------
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if not self.promotable():
            self.election_elapsed = min(self.election_elapsed, self.randomized_timeout)
            return
        if self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            election.hup(self)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            self.lead_transferee = None  # a transfer that did not finish in time is abandoned
            if self.config.check_quorum and not roles.quorum_active(self):
                self.become_follower(self.term, None)
                return
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            roles.bcast_heartbeat(self)
