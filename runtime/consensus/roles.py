"""Per-role message handling and the leader's replication (etcd stepLeader/stepCandidate/stepFollower).

RaftCore.step handles what is common (terms, vote requests) and then calls the
step function of the current role. Each function here takes the core as its
first argument; roles change by swapping ``core._step``, not by if-chains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deft.runtime.consensus import election
from deft.runtime.consensus.errors import InvariantViolation
from deft.runtime.consensus.messages import EntryKind, Message, MsgType
from deft.runtime.consensus.progress import ProgressState
from deft.runtime.consensus.quorum import majority
from deft.runtime.consensus.ready import ReadState
from deft.runtime.consensus.role import Role

if TYPE_CHECKING:
    from deft.runtime.consensus.core import RaftCore


# -- follower ------------------------------------------------------------------
def step_follower(core: RaftCore, m: Message) -> None:
    if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
        core.election_elapsed = 0
        core.lead = m.src
        _handle_append_or_heartbeat(core, m)
    elif m.type is MsgType.TIMEOUT_NOW:
        election.hup(core, transfer=True)  # our leader hands over: campaign now
    elif m.type is MsgType.READ_INDEX_RESP and m.context in core.forwarded_reads:
        core.forwarded_reads.discard(m.context)  # a duplicated answer is ignored
        core.read_states.append(ReadState(m.index, m.context))
    # Responses meant for an earlier role are ignored.


def _handle_append_or_heartbeat(core: RaftCore, m: Message) -> None:
    if m.type is MsgType.SNAP:
        _handle_snapshot(core, m)
        return
    if m.type is MsgType.HEARTBEAT:
        # m.commit <= what this follower acknowledged to this leader (same term).
        core.log.commit_to(m.commit)
        core.send(Message(MsgType.HEARTBEAT_RESP, core.id, m.src, core.term, context=m.context))
        return
    lg = core.log
    if m.index < lg.committed:
        # Everything up to commit matches any leader's log; answer with it.
        core.send(Message(MsgType.APP_RESP, core.id, m.src, core.term, index=lg.committed))
        return
    last_new = lg.maybe_append(m.index, m.log_term, m.commit, m.entries)
    if last_new is not None:
        core.send(Message(MsgType.APP_RESP, core.id, m.src, core.term, index=last_new))
        return
    hint = lg.find_conflict_by_term(m.index, m.log_term)
    core.send(Message(MsgType.APP_RESP, core.id, m.src, core.term, index=m.index,
                      reject=True, reject_hint=hint, log_term=lg.term(hint) or 0))


def _handle_snapshot(core: RaftCore, m: Message) -> None:
    snap = m.snapshot
    assert snap is not None
    lg = core.log
    if snap.index <= lg.committed:
        pass  # stale or duplicated: we already have (and committed) all of it
    elif lg.match_term(snap.index, snap.term):
        # Our log already holds the snapshot's entries: keep the rest (it may
        # include entries we acknowledged) and only move commit forward.
        lg.commit_to(snap.index)
    else:
        core.restore(snap)
    core.send(Message(MsgType.APP_RESP, core.id, m.src, core.term, index=lg.committed))


# -- (pre-)candidate -------------------------------------------------------------
def step_candidate(core: RaftCore, m: Message) -> None:
    if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
        # A leader exists in our term (for a pre-candidate: in its current term).
        core.become_follower(m.term, m.src)
        _handle_append_or_heartbeat(core, m)
        return
    pre = core.role is Role.PRE_CANDIDATE
    expected = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
    if m.type is not expected:
        return
    if pre and not m.reject and m.term != core.term + 1:
        return  # a grant from an earlier pre-campaign
    election.on_vote_result(core, core.poll(m.src, not m.reject))


# -- leader ------------------------------------------------------------------------
def step_leader(core: RaftCore, m: Message) -> None:
    if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
        raise InvariantViolation(f"two leaders in term {core.term}: {core.id} and {m.src}")
    pr = core.prs.get(m.src)
    if pr is None:
        return
    if m.type is MsgType.PROP:  # forwarded by a follower; refused (NotLeader) while handing over: dropped
        if core.lead_transferee is None:
            for e in m.entries:
                if e.kind is EntryKind.NORMAL:
                    core.propose(e.data)
        return
    if m.type is MsgType.READ_INDEX:
        start_read(core, m.context, m.src)  # not ready yet: dropped, the follower's client retries
        return
    if m.type is MsgType.APP_RESP:
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # The follower's entry at hint has log_term; our entries after the
                # last one with a term <= log_term cannot match it (etcd's
                # findConflictByTerm, leader side): skip them in one round trip.
                hint = core.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decrease(m.index, hint):
                send_all(core, m.src, send_if_empty=True)
            return
        if pr.maybe_update(m.index):
            if pr.state is not ProgressState.REPLICATE:
                pr.become_replicate()
            if m.src == core.lead_transferee:
                maybe_send_timeout_now(core, m.src)
            if core.maybe_commit():
                bcast_append(core, send_if_empty=True)
                return
        send_all(core, m.src, send_if_empty=False)
    elif m.type is MsgType.HEARTBEAT_RESP:
        if m.context:
            _ack_read(core, m.src, m.context)
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.SNAPSHOT:
            pr.become_probe()  # the snapshot may have been lost: probing resends it
        if pr.state is ProgressState.REPLICATE and pr.paused():
            pr.inflight.popleft()  # a lost append must not stall the stream forever
        if pr.match < core.log.last_index():
            # An empty append at next-1 reveals a gap left by a dropped message.
            send_append(core, m.src, send_if_empty=True)


def maybe_send_timeout_now(core: RaftCore, to: int) -> None:
    if core.prs[to].match == core.log.last_index():
        core.send(Message(MsgType.TIMEOUT_NOW, core.id, to, core.term))


def send_append(core: RaftCore, to: int, send_if_empty: bool) -> bool:
    """Send one append to ``to`` if its progress allows; return True if sent."""
    pr = core.prs[to]
    if pr.paused():
        return False
    prev = pr.next - 1
    if not send_if_empty and prev == core.log.last_index():
        return False  # nothing new for it (the common case once a batch is out)
    prev_term = core.log.term(prev)
    if prev_term is None:  # compacted away: the follower needs the snapshot
        snap = core.snapshot
        if snap is None or prev > core.log.last_index():
            raise InvariantViolation(f"no term for index {prev} and no snapshot to send")
        core.send(Message(MsgType.SNAP, core.id, to, core.term, snapshot=snap))
        pr.become_snapshot(snap.index)
        return True
    ents = core.log.slice(pr.next, pr.next + core.config.max_entries_per_msg)
    if not ents and not send_if_empty:
        return False
    core.send(Message(MsgType.APP, core.id, to, core.term, log_term=prev_term, index=prev,
                      entries=tuple(ents), commit=core.log.committed))
    pr.sent(prev + len(ents), len(ents))
    return True


def send_all(core: RaftCore, to: int, send_if_empty: bool) -> None:
    """Send what is queued for ``to`` now: one probe, or a pipeline of batches."""
    sent = send_append(core, to, send_if_empty)
    while sent and core.prs[to].state is ProgressState.REPLICATE:
        sent = send_append(core, to, send_if_empty=False)


def bcast_append(core: RaftCore, send_if_empty: bool) -> None:
    for p in core.others():
        send_all(core, p, send_if_empty)


def bcast_heartbeat(core: RaftCore, context: bytes = b"") -> None:
    for p in core.others():
        pr = core.prs[p]
        core.send(Message(MsgType.HEARTBEAT, core.id, p, core.term,
                          commit=min(pr.match, core.log.committed), context=context))


def start_read(core: RaftCore, context: bytes, asker: int) -> bool:
    """Leader: begin a ReadIndex round for ``asker``; False if not possible yet."""
    if core.log.term(core.log.committed) != core.term:
        return False  # our commit index may lag the cluster's until our noop commits
    core.pending_reads[context] = (core.log.committed, {core.id}, asker)
    if core.membership.voters == (core.id,):
        _ack_read(core, core.id, context)  # a quorum of one: confirmed at once
    else:
        bcast_heartbeat(core, context)
    return True


def _ack_read(core: RaftCore, voter: int, context: bytes) -> None:
    """A heartbeat sent after the read began came back: once a majority did, the
    leader was still the leader after the read began, so the read and every
    older pending one are confirmed."""
    pending = core.pending_reads.get(context)
    if pending is None or voter not in core.membership.voters:
        return
    pending[1].add(voter)
    if len(pending[1] & set(core.membership.voters)) < majority(len(core.membership.voters)):
        return
    while core.pending_reads:
        ctx, (index, _, asker) = next(iter(core.pending_reads.items()))
        del core.pending_reads[ctx]
        if asker == core.id:
            core.read_states.append(ReadState(index, ctx))
        else:
            core.send(Message(MsgType.READ_INDEX_RESP, core.id, asker, core.term, index=index,
                              context=ctx))
        if ctx == context:
            break


def quorum_active(core: RaftCore) -> bool:
    """Check-quorum: did a majority answer since the last check? Resets the marks."""
    voters = core.membership.voters
    active = 0
    for p, pr in core.prs.items():
        if p in voters and (p == core.id or pr.recent_active):
            active += 1
        if p != core.id:
            pr.recent_active = False
    return active >= majority(len(voters))
