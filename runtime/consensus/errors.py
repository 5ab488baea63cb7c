"""Errors raised by the Raft library; all subclass DeftError."""

from deft.runtime.errors import DeftError


class ConsensusError(DeftError):
    """Root of the consensus errors."""


class NotLeader(ConsensusError):
    """propose() was called on a node that is not the leader.

    ``leader_hint`` is the id of the leader this node last heard from, or
    None; clients retry there (``propose_or_forward`` forwards instead).
    """

    def __init__(self, node_id: int, leader_hint: int | None) -> None:
        super().__init__(f"node {node_id} is not the leader (leader hint: {leader_hint})")
        self.node_id = node_id
        self.leader_hint = leader_hint


class NotReady(ConsensusError):
    """The leader cannot serve this yet (e.g. a read before it committed an entry of its term); retry soon."""


class InvalidRequest(ConsensusError, ValueError):
    """A caller asked for something that can never succeed (e.g. transfer to a non-member)."""


class InvariantViolation(ConsensusError):
    """A Raft safety invariant is broken; continuing could corrupt state (etcd panics here)."""


class StorageError(ConsensusError):
    """Durable Raft state cannot be read or written."""


class CorruptStorage(StorageError):
    """Durable Raft state failed a checksum or sanity check somewhere other than a torn tail."""
