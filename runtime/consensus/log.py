"""The Raft log as seen by the core: stable prefix + unstable suffix, commit and apply marks.

The core keeps the whole log in memory (DEFT's global state log is small and
compaction will trim its front); storage is read only at start. ``stable`` is
the last index known durable: entries after it go out in the next Ready and
become stable in ``advance``. Indexes start at 1; index 0 (or the snapshot
index, once compaction exists) is a sentinel with a known term.
"""

from __future__ import annotations

from collections.abc import Sequence

from deft.runtime.consensus.errors import InvariantViolation
from deft.runtime.consensus.messages import Entry, EntryKind


class RaftLog:
    def __init__(self, entries: Sequence[Entry] = (), commit: int = 0,
                 offset: int = 0, offset_term: int = 0) -> None:
        self.offset = offset            # index of the sentinel before entries[0]
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        for k, e in enumerate(self.entries):
            if e.index != offset + 1 + k:
                raise InvariantViolation(f"log entries not contiguous at {e.index}")
        if commit > self.last_index():
            raise InvariantViolation(f"commit {commit} beyond last index {self.last_index()}")
        self.committed = commit
        self.applied = offset
        self.stable = self.last_index()
        #: indexes of the CONF entries in the log, ascending
        self.conf_indexes = [e.index for e in self.entries if e.kind is EntryKind.CONF]

    # -- queries -------------------------------------------------------------
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``, or None if it is not in the log."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index():
            return self.entries[index - self.offset - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: the candidate's log is at least as up to date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (clamped to the log)."""
        lo = max(lo, self.offset + 1)
        hi = min(hi, self.last_index() + 1)
        return self.entries[lo - self.offset - 1:hi - self.offset - 1] if lo < hi else []

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts by term; 0 if all match."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term <= term (etcd's fast backtracking hint).

        Entries in (i, index] have a term above ``term`` here, so they cannot
        match a leader whose entry at ``index`` has ``term``: skipping them is safe.
        """
        i = min(index, self.last_index())
        while i > self.offset:
            t = self.term(i)
            if t is not None and t <= term:
                break
            i -= 1
        return i

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def conf_at(self, index: int) -> Entry | None:
        """The latest CONF entry at or before ``index`` still in the log, if any."""
        for i in reversed(self.conf_indexes):
            if i <= index:
                return self.entry(i)
        return None

    # -- mutations -----------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> int:
        """Append, truncating any existing suffix from entries[0].index; return last index."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise InvariantViolation(f"truncating committed entry {first} (commit {self.committed})")
        if first > self.last_index() + 1:
            raise InvariantViolation(f"gap: appending {first} after {self.last_index()}")
        del self.entries[first - self.offset - 1:]
        self.entries.extend(entries)
        while self.conf_indexes and self.conf_indexes[-1] >= first:
            self.conf_indexes.pop()  # a truncated configuration no longer applies
        self.conf_indexes += [e.index for e in entries if e.kind is EntryKind.CONF]
        # The truncated part may have been durable; the new suffix is not.
        self.stable = min(self.stable, first - 1)
        return self.last_index()

    def maybe_append(self, prev_index: int, prev_term: int, commit: int,
                     entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries; returns the last index now known to match, or None.

        Only entries that conflict by term are truncated: a stale, duplicated or
        reordered message whose entries all match changes nothing, and commit
        moves only forward (PySyncObj truncates matching entries here).
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - prev_index - 1:])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        """Move commit forward (never back)."""
        if index > self.committed:
            if index > self.last_index():
                raise InvariantViolation(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit ``index`` only if its entry is from ``term`` (Figure 8)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (already applied and covered by a snapshot)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise InvariantViolation(f"compacting {index} beyond applied {self.applied}")
        term = self.term(index)
        assert term is not None
        del self.entries[:index - self.offset]
        self.offset, self.offset_term = index, term
        self.conf_indexes = [i for i in self.conf_indexes if i > index]

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot's position (InstallSnapshot)."""
        if index <= self.committed:
            raise InvariantViolation(f"restoring snapshot {index} at or below commit {self.committed}")
        self.entries = []
        self.conf_indexes = []
        self.offset, self.offset_term = index, term
        self.committed = self.stable = index

    # -- Ready bookkeeping ---------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        return self.slice(self.stable + 1, self.last_index() + 1)

    def stable_to(self, index: int, term: int) -> None:
        # A truncation between ready() and advance() may have replaced the entry;
        # then it is not durable yet and stays in the next Ready.
        if index > self.stable and self.term(index) == term:
            self.stable = index

    def next_committed(self) -> list[Entry]:
        return self.slice(self.applied + 1, self.committed + 1)

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise InvariantViolation(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index
