"""A global observer that checks Raft's safety properties after every simulated event.

Properties (Raft paper Figure 3, plus monotonicity):
  election safety, leader append-only, log matching, leader completeness,
  state machine safety; term and commit never decrease (in memory within one
  life of a node, and in durable state across crashes).
Every check is incremental so it can run after every event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deft.runtime.consensus import (Entry, HardState, MemoryStorage, Message, MsgType, RaftCore,
                                    Role, Snapshot)
from deft.runtime.consensus.storage import DiskStorage


class SafetyViolation(AssertionError):
    pass


@dataclass
class _LeaderWatch:
    term: int
    last_entry: Entry | None   # identity of the leader's last entry when last checked
    last_index: int
    checked: int = 0           # prefix of Observer.committed already verified


@dataclass
class Observer:
    leaders: dict[int, int] = field(default_factory=dict)          # term -> node
    #: (index, term) -> (kind, data, term of the previous entry): log matching, incrementally
    entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = field(default_factory=dict)
    votes: dict[tuple[int, int], int] = field(default_factory=dict)   # (voter, term) -> candidate
    snapshots: dict[int, Snapshot] = field(default_factory=dict)
    applied: dict[int, Entry] = field(default_factory=dict)        # index -> entry
    committed: list[tuple[int, int, int]] = field(default_factory=list)  # (index, term, commit term)
    _max_committed: int = 0   # known-committed indexes are always 1.._max_committed
    _watch: dict[int, _LeaderWatch] = field(default_factory=dict)  # node -> current leadership
    _life: dict[int, tuple[int, int]] = field(default_factory=dict)  # node -> (term, commit)
    _durable: dict[int, HardState] = field(default_factory=dict)

    def node_restarted(self, node: int) -> None:
        self._life.pop(node, None)
        self._watch.pop(node, None)

    def on_persist(self, node: int, hs: HardState | None, entries: tuple[Entry, ...],
                   stored: MemoryStorage | DiskStorage) -> None:
        """After a Ready was made durable; ``stored`` is the node's storage afterwards."""
        if hs is not None:
            old = self._durable.get(node)
            if old is not None and (hs.term < old.term or hs.commit < old.commit):
                raise SafetyViolation(f"node {node}: durable hard state went back {old} -> {hs}")
            if old is not None and hs.term == old.term and old.vote is not None and hs.vote != old.vote:
                raise SafetyViolation(f"node {node}: changed its vote in term {hs.term}")
            self._durable[node] = hs
        for e in entries:
            prev_term = stored.term(e.index - 1)
            key = (e.index, e.term)
            val = (int(e.kind), e.data, prev_term)
            seen = self.entries.setdefault(key, val)
            if seen != val:
                raise SafetyViolation(f"log matching: two different entries at {key}: {seen} vs {val}")

    def on_snapshot(self, node: int, snap: Snapshot) -> None:
        """State machine safety for snapshots: equal index => equal state."""
        seen = self.snapshots.setdefault(snap.index, snap)
        if seen != snap:
            raise SafetyViolation(f"node {node}: snapshot at {snap.index} differs from another node's")

    def on_send(self, m: Message, durable: HardState, stored: MemoryStorage | DiskStorage) -> None:
        """Promises in a message must already be durable at its sender (Ready contract)."""
        if m.type is MsgType.VOTE_RESP and not m.reject:
            if (durable.term, durable.vote) != (m.term, m.dst):
                raise SafetyViolation(f"vote sent before it was durable: {m.describe()}, "
                                      f"durable {durable}")
            first = self.votes.setdefault((m.src, m.term), m.dst)
            if first != m.dst:
                raise SafetyViolation(f"node {m.src} voted for {first} and {m.dst} in term {m.term}")
        elif m.type is MsgType.APP_RESP and not m.reject and m.index > stored.last_index():
            raise SafetyViolation(f"append ack before the entries were durable: {m.describe()}")
        if m.term > durable.term and m.type not in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP):
            raise SafetyViolation(f"message with a term not yet durable: {m.describe()}")

    def on_apply(self, node: int, e: Entry) -> None:
        seen = self.applied.setdefault(e.index, e)
        if seen != e:
            raise SafetyViolation(f"state machine safety: node {node} applied {e} at {e.index}, "
                                  f"another node applied {seen}")

    def check(self, nodes: dict[int, RaftCore]) -> None:
        for nid, core in nodes.items():
            self._check_monotonic(nid, core)
            if core.role is Role.LEADER:
                self._check_leader(nid, core)
            else:
                self._watch.pop(nid, None)
        for nid, core in nodes.items():
            if core.role is Role.LEADER:
                self._check_completeness(core, self._watch[nid])

    def _check_monotonic(self, nid: int, core: RaftCore) -> None:
        term, commit = self._life.get(nid, (0, 0))
        if core.term < term:
            raise SafetyViolation(f"node {nid}: term went back {term} -> {core.term}")
        if core.log.committed < commit:
            raise SafetyViolation(f"node {nid}: commit went back {commit} -> {core.log.committed}")
        self._life[nid] = (core.term, core.log.committed)

    def _check_leader(self, nid: int, core: RaftCore) -> None:
        other = self.leaders.setdefault(core.term, nid)
        if other != nid:
            raise SafetyViolation(f"election safety: nodes {other} and {nid} lead term {core.term}")
        w = self._watch.get(nid)
        lg = core.log
        if w is None or w.term != core.term:
            w = self._watch[nid] = _LeaderWatch(core.term, None, 0)
        elif lg.last_index() < w.last_index or (
                w.last_entry is not None and w.last_index > lg.offset
                and lg.entries[w.last_index - lg.offset - 1] is not w.last_entry):
            raise SafetyViolation(f"leader append-only: leader {nid} of term {core.term} rewrote its log")
        w.last_index = lg.last_index()
        w.last_entry = lg.entries[-1] if lg.entries else None
        # A leader's commit advance is when entries become known committed.
        if lg.committed > self._max_committed:
            for e in lg.slice(self._max_committed + 1, lg.committed + 1):
                self.committed.append((e.index, e.term, core.term))
            self._max_committed = lg.committed

    def _check_completeness(self, core: RaftCore, w: _LeaderWatch) -> None:
        for index, term, commit_term in self.committed[w.checked:]:
            if index < core.log.offset:
                continue  # inside the leader's snapshot; covered by the snapshot check
            if commit_term < core.term and core.log.term(index) != term:
                raise SafetyViolation(f"leader completeness: leader {core.id} of term {core.term} "
                                      f"lacks {term}/{index} committed in term {commit_term}")
        w.checked = len(self.committed)
