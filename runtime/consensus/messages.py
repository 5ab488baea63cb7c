"""Wire-independent Raft types: entries, hard state and messages.

All types are frozen dataclasses so a Ready batch handed to the driver cannot be
changed behind the core's back. Encoding for a transport lives in the driver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from deft.runtime.consensus.membership import Membership


class EntryKind(enum.IntEnum):
    NORMAL = 0
    #: Appended by every new leader so it can commit entries of earlier terms
    #: (a leader commits only entries of its own term by counting; Figure 8).
    NOOP = 1
    #: data = Membership.encode(); takes effect when appended (see membership.py).
    CONF = 2


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of ``index`` (whose entry had ``term``); replaces the log up to it.

    ``membership`` is the configuration in force at ``index``,
    since the configuration entries it covers are gone from the log.
    """

    index: int
    term: int
    data: bytes
    membership: Membership | None = None


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


class MsgType(enum.Enum):
    APP = "MsgApp"
    APP_RESP = "MsgAppResp"
    HEARTBEAT = "MsgHeartbeat"
    HEARTBEAT_RESP = "MsgHeartbeatResp"
    VOTE = "MsgVote"
    VOTE_RESP = "MsgVoteResp"
    PRE_VOTE = "MsgPreVote"
    PRE_VOTE_RESP = "MsgPreVoteResp"
    SNAP = "MsgSnap"
    TIMEOUT_NOW = "MsgTimeoutNow"
    READ_INDEX = "MsgReadIndex"
    READ_INDEX_RESP = "MsgReadIndexResp"
    #: a follower forwards a client's proposal to its leader (entries: the data, term/index 0)
    PROP = "MsgProp"


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message.

    Field use by type (as in etcd-io/raft):
      APP:        index/log_term = the entry preceding ``entries``; commit.
      APP_RESP:   index = last index now matching (or the rejected prev index);
                  reject + reject_hint/log_term = where the leader should probe next.
      HEARTBEAT:  commit = min(follower's match, leader commit).
      (PRE_)VOTE: index/log_term = the candidate's last entry.
      SNAP:       snapshot = the leader's latest snapshot (InstallSnapshot); answered by APP_RESP.
    """

    type: MsgType
    src: int
    dst: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    #: VOTE sent on a leader's request (TIMEOUT_NOW): voters skip the lease check.
    transfer: bool = False
    #: HEARTBEAT(_RESP), READ_INDEX(_RESP): the read's id, echoed back.
    context: bytes = b""

    def describe(self) -> str:
        """A stable one-line rendering, used by the scripted tests' golden files."""
        parts = [f"{self.src}->{self.dst} {self.type.value} Term:{self.term}"]
        t = self.type
        if t in (MsgType.APP, MsgType.VOTE, MsgType.PRE_VOTE):
            parts.append(f"Log:{self.log_term}/{self.index}")
        if t in (MsgType.APP_RESP, MsgType.READ_INDEX_RESP):
            parts.append(f"Index:{self.index}")
        if t in (MsgType.APP, MsgType.HEARTBEAT):
            parts.append(f"Commit:{self.commit}")
        if self.transfer:
            parts.append("Transfer")
        if self.context:
            parts.append(f"Ctx:{self.context.decode('utf-8', 'backslashreplace')}")
        if self.reject:
            parts.append("Rejected")
            if t is MsgType.APP_RESP:
                parts.append(f"(Hint: {self.reject_hint}/{self.log_term})")
        if self.snapshot is not None:
            parts.append(f"Snapshot:{self.snapshot.term}/{self.snapshot.index}")
        if self.entries:
            parts.append("Entries:[" + ", ".join(describe_entry(e) for e in self.entries) + "]")
        return " ".join(parts)


def describe_entry(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        return f"{e.term}/{e.index} noop"
    if e.kind is EntryKind.CONF:
        return f"{e.term}/{e.index} conf:{Membership.decode(e.data).describe()}"
    text = e.data.decode("utf-8", "backslashreplace")
    return f"{e.term}/{e.index} {text!r}"
