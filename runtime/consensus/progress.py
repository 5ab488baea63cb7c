"""The leader's view of one follower (etcd tracker/progress.go, simplified).

PROBE: the leader does not know where the follower's log matches; it sends one
append at a time and waits (until a response or the next heartbeat).
SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is
in flight and nothing else is sent until it is acknowledged (or a heartbeat
response suggests it was lost: back to PROBE, which resends it).
REPLICATE: the follower is known to match up to ``match``; the leader streams
appends and advances ``next`` optimistically (pipelining), bounded by
``max_inflight`` unacknowledged messages.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    max_inflight: int
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    #: last index of each unacknowledged append, oldest first (REPLICATE only).
    inflight: deque[int] = field(default_factory=deque)

    def paused(self) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= self.max_inflight

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.next = index + 1
        self.probe_sent = False
        self.inflight.clear()

    def sent(self, last: int, n_entries: int) -> None:
        """Record an append carrying entries up to ``last``."""
        if self.state is ProgressState.REPLICATE:
            if n_entries:
                self.next = last + 1
                self.inflight.append(last)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A success ack for ``index``; returns True if match moved (never backwards)."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """A reject of the append whose prev index was ``rejected``; False if stale."""
        if self.state is ProgressState.SNAPSHOT:
            return False  # answers an append sent before the snapshot
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an old message, already superseded by an ack
            self.become_probe()
            self.next = max(self.match + 1, min(rejected, hint + 1))
            return True
        if self.next - 1 != rejected:
            return False  # answer to an earlier probe
        self.next = max(self.match + 1, min(rejected, hint + 1))
        self.probe_sent = False
        return True
