"""Elections: campaigns (pre-vote, vote, transfer), vote requests and results (Raft §5.2, §9.6).

Module functions taking the core, like the role step functions in ``roles``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deft.runtime.consensus.messages import Message, MsgType
from deft.runtime.consensus.quorum import VoteResult
from deft.runtime.consensus.role import Role

if TYPE_CHECKING:
    from deft.runtime.consensus.core import RaftCore


def in_lease(core: RaftCore) -> bool:
    """With check-quorum, a node that heard from a leader within an election
    timeout ignores vote requests: that leader is presumably alive."""
    return (core.config.check_quorum and core.lead is not None
            and core.election_elapsed < core.config.election_tick)


def hup(core: RaftCore, transfer: bool = False) -> None:
    """Start an election: pre-vote first if enabled, unless a leader asked us to take over."""
    if not core.promotable():
        return
    start_campaign(core, pre=core.config.pre_vote and not transfer, transfer=transfer)


def start_campaign(core: RaftCore, pre: bool, transfer: bool = False) -> None:
    if pre:
        core.become_pre_candidate()
        kind, term = MsgType.PRE_VOTE, core.term + 1
    else:
        core.become_candidate()
        kind, term = MsgType.VOTE, core.term
    if core.poll(core.id, True) is VoteResult.WON:  # a single-voter cluster
        on_vote_result(core, VoteResult.WON)
        return
    for p in core.membership.voters:
        if p == core.id:
            continue
        core.send(Message(kind, core.id, p, term, log_term=core.log.last_term(),
                          index=core.log.last_index(), transfer=transfer))


def on_vote_result(core: RaftCore, result: VoteResult) -> None:
    if result is VoteResult.WON:
        if core.role is Role.PRE_CANDIDATE:
            start_campaign(core, pre=False)
        else:
            core.become_leader()
    elif result is VoteResult.LOST:
        core.become_follower(core.term, None)


def handle_vote_request(core: RaftCore, m: Message) -> None:
    pre = m.type is MsgType.PRE_VOTE
    resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
    can_vote = (core.vote == m.src or (core.vote is None and core.lead is None)
                or (pre and m.term > core.term))
    if can_vote and core.log.is_up_to_date(m.index, m.log_term):
        # The reply carries the candidate's term; a vote is recorded in the
        # hard state, which the Ready contract persists before sending.
        core.send(Message(resp, core.id, m.src, m.term))
        if not pre:
            core.election_elapsed = 0
            core.vote = m.src
    else:
        core.send(Message(resp, core.id, m.src, core.term, reject=True))
