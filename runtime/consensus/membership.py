"""Cluster membership: voters and learners, changed one voter at a time (Raft dissertation §4).

A configuration change is a log entry (EntryKind.CONF) holding the whole new
``Membership``. Every member uses the latest configuration in its log, from
the moment the entry is appended, committed or not (§4.1); if the entry is
truncated, the previous one applies again. Safety rests on three rules,
enforced by ``RaftCore.propose_conf_change``: at most one voter added or
removed per change, no new change until the previous one is committed, and
none before the leader has committed an entry of its own term (the fix for
the single-server change bug reported on raft-dev in 2015).
Learners receive the log but do not vote, count for commit or campaign.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from deft.runtime.consensus.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Membership:
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.voters:
            raise InvalidRequest("a membership needs at least one voter")
        if tuple(sorted(set(self.voters))) != self.voters or \
                tuple(sorted(set(self.learners))) != self.learners:
            raise InvalidRequest("voters and learners must be sorted and unique")
        if set(self.voters) & set(self.learners):
            raise InvalidRequest(f"{sorted(set(self.voters) & set(self.learners))} "
                                 "cannot be voter and learner at once")

    @staticmethod
    def of(voters: object, learners: object = ()) -> Membership:
        """Build from any iterables of ids (sorted and deduplicated here)."""
        return Membership(tuple(sorted(set(voters))), tuple(sorted(set(learners))))  # type: ignore[call-overload]

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def check_single_change(self, new: Membership) -> None:
        changed = set(self.voters) ^ set(new.voters)
        if len(changed) > 1:
            raise InvalidRequest(f"change voters one at a time: {self.voters} -> {new.voters}")

    def encode(self) -> bytes:
        return orjson.dumps({"v": list(self.voters), "l": list(self.learners)})

    @staticmethod
    def decode(data: bytes) -> Membership:
        d = orjson.loads(data)
        return Membership(tuple(d["v"]), tuple(d["l"]))

    def describe(self) -> str:
        s = "voters=(" + " ".join(map(str, self.voters)) + ")"
        if self.learners:
            s += " learners=(" + " ".join(map(str, self.learners)) + ")"
        return s
