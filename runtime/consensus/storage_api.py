"""The storage contract the core relies on, and an in-memory implementation.

The core reads storage once, at start (``load``); afterwards the driver writes
what each Ready asks for (``save``) and stores local snapshots (``compact``).
Both must be durable when they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from deft.runtime.consensus.errors import StorageError
from deft.runtime.consensus.messages import Entry, HardState, Snapshot


class Storage(Protocol):
    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """The durable hard state, latest snapshot, and the entries after it (contiguous)."""
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None) -> None:
        """Persist one Ready: ``snapshot`` first (it replaces the whole stored log),
        then ``entries`` (replacing stored entries from entries[0].index on), then
        ``hard_state``. Entries go before the hard state so that a stored commit
        index never points past the stored log."""
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Store a local snapshot and drop the stored entries it covers."""
        ...


def merge_entries(log: list[Entry], offset: int, entries: Sequence[Entry]) -> None:
    """Apply a Ready's entries to a stored log (log[0] has index offset + 1) in place."""
    if not entries:
        return
    first = entries[0].index
    if first <= offset or first > offset + len(log) + 1:
        raise StorageError(f"entries from {first} do not fit a stored log of "
                           f"{offset + 1}..{offset + len(log)}")
    del log[first - offset - 1:]
    log.extend(entries)


class MemoryStorage:
    """Storage held in memory; "durable" means it survives a RaftCore being discarded."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    @property
    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def term(self, index: int) -> int | None:
        if self.snapshot is not None and index == self.snapshot.index:
            return self.snapshot.term
        if index == 0:
            return 0
        k = index - self.offset - 1
        return self.entries[k].term if 0 <= k < len(self.entries) else None

    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        return self.hard_state, self.snapshot, list(self.entries)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None) -> None:
        if snapshot is not None:
            self.snapshot, self.entries = snapshot, []
        merge_entries(self.entries, self.offset, entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.index <= self.offset:
            return
        if snapshot.index > self.last_index():
            raise StorageError(f"snapshot {snapshot.index} beyond stored log {self.last_index()}")
        del self.entries[:snapshot.index - self.offset]
        self.snapshot = snapshot
