"""Static configuration of one Raft member."""

from __future__ import annotations

from dataclasses import dataclass

from deft.runtime.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """Static parameters of one member.

    ``peers`` and ``learners`` are the bootstrap membership, used until the log
    or a snapshot holds a configuration entry. A node joining an existing
    cluster starts with the cluster's bootstrap membership (it may list
    neither) and waits, without campaigning, until the log makes it a member.
    """

    node_id: int
    peers: tuple[int, ...]
    learners: tuple[int, ...] = ()
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_entries_per_msg: int = 64
    max_inflight: int = 256
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not self.peers:
            raise ConfigError("raft: peers must list at least one voter")
        if len(set(self.peers)) != len(self.peers) or set(self.peers) & set(self.learners):
            raise ConfigError(f"raft: duplicate ids in peers {self.peers} / learners {self.learners}")
        if not 0 < self.heartbeat_tick < self.election_tick:
            raise ConfigError("raft: need 0 < heartbeat_tick < election_tick")
        if self.max_entries_per_msg < 1 or self.max_inflight < 1:
            raise ConfigError("raft: max_entries_per_msg and max_inflight must be >= 1")
