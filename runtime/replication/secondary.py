"""The secondary's side of batch replication: a pure state machine (no I/O, no clock).

The secondary buffers the switch's duplicates, stages each batch's state
clock when it has all of the batch's packets, votes, and applies staged
batches when the primary commits them. If the primary dies it becomes the
new primary through ``take_over``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from deft.runtime.replication.actions import Action, Refused, Replay, Send, TakeOver
from deft.runtime.replication.errors import (
    InvariantViolation,
    NotSynced,
    ProtocolMisuse,
)
from deft.runtime.replication.messages import (
    STAMP_DTYPE,
    Commit,
    Missing,
    NeedFrom,
    Packets,
    Prepare,
    Sync,
    Vote,
    check_message,
    make_stamps,
    stamp_keys,
)

Stamp = tuple[int, int]


class SecondaryReplica:
    """Staging, voting and applying replicated batches; the failover plan.

    Contract with the driver: ``on_packets(stamps, payloads)`` for every
    duplicate from the switch, ``step(msg)`` for every message from the
    primary, ``tick()`` on a timer; execute the returned actions in order.

    * Prepare t is staged (not applied) and voted for only when t follows the
      last staged batch and every one of its stamps is buffered; a Prepare
      past a gap is held (and NeedFrom asks for the gap), a Prepare whose
      packets have not all arrived waits for them (and after
      ``missing_ticks`` a Missing asks the primary for them).
    * Commit(t) (or a Prepare's ``committed_upto``) applies staged batches <= t
      in order: FlowTable records and removals, nextExpectedPktID; the packet
      clock becomes t; their packets leave the buffer. A committed batch was
      released and sent (see PrimaryReplicator's output-commit rule). An
      explicit Commit (sent only after a quiet spell) is acknowledged by a Vote.
    * Buffered packets are never released while the primary lives.

    A new secondary (``synced=False``) buffers duplicates and holds Prepares
    until the primary's Sync arrives; the committed Sync replaces its state.

    Crash points: prepare_received, voted, commit_received.
    """

    CRASH_POINTS = ("prepare_received", "voted", "commit_received")

    def __init__(self, epoch: int, pair: int, table: Any, *, last_batch: int = 0, synced: bool = True,
                 missing_ticks: int = 2, max_held: int = 64) -> None:
        for name, value, low in (("epoch", epoch, 0), ("pair", pair, 0), ("last_batch", last_batch, 0),
                                 ("missing_ticks", missing_ticks, 1), ("max_held", max_held, 1)):
            if type(value) is not int or value < low:
                raise ProtocolMisuse(f"SecondaryReplica: {name} must be an int >= {low}, got {value!r}")
        self.epoch = epoch
        self.pair = pair
        self.table = table
        self.next_expected: dict[int, int] = {}
        self.committed = last_batch      # the packet clock: batches <= this are applied (and were released)
        self.prepared = last_batch       # batches <= this are staged or applied
        self.missing_ticks = missing_ticks
        self.max_held = max_held
        self.refused: Counter[str] = Counter()
        self.stale = 0                   # duplicates of packets already applied
        self.waited = 0                  # Prepares that had to wait for their packets' copies
        self._base = synced              # has a committed state to build on
        self._sync_batch: int | None = None
        self._staged: dict[int, Prepare | Sync] = {}
        self._held: dict[int, Prepare] = {}
        self._buffer: dict[Stamp, Any] = {}
        self._waiting_since: int | None = None
        self._need_sent = -1
        self._now = 0
        self._retired = False

    # -- queries ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once there is a committed state (initial pair, or a committed Sync)."""
        return self._base

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def waiting(self) -> bool:
        """A Prepare is held (its packets or an earlier batch have not arrived): ticks matter."""
        return bool(self._held)

    @staticmethod
    def received_point(msg: Any) -> str | None:
        if isinstance(msg, Prepare | Sync):
            return "prepare_received"
        if isinstance(msg, Commit):
            return "commit_received"
        return None

    # -- driver calls ------------------------------------------------------------------------------

    def on_packets(self, stamps: np.ndarray, payloads: tuple | list | None = None) -> list[Action]:
        """Duplicates from the switch (or forwarded by the primary); payloads are kept opaque."""
        self._check_live()
        if payloads is not None and len(payloads) != len(stamps):
            raise ProtocolMisuse("on_packets: payloads do not match stamps")
        ne, buf = self.next_expected, self._buffer
        for i, key in enumerate(stamp_keys(stamps)):
            if self._base and key[1] < ne.get(key[0], 1):
                self.stale += 1
                continue
            buf[key] = None if payloads is None else payloads[i]
        return self._advance()

    def trim(self) -> int:
        """Drop buffered copies the applied state already covers (seq below nextExpectedPktID); how many.

        A batch's copies leave the buffer when it is applied, but a copy of a
        packet the primary never put in a batch (it skipped the gap, or the
        copy came twice by different paths) would stay for ever. The driver
        calls this now and then; it scans the buffer, so not per message.
        """
        self._check_live()
        if not self._base:
            return 0
        ne = self.next_expected
        old = [k for k in self._buffer if k[1] < ne.get(k[0], 1)]
        for key in old:
            del self._buffer[key]
        self.stale += len(old)
        return len(old)

    def tick(self) -> list[Action]:
        """Logical time: ask for the packets of a Prepare that has waited ``missing_ticks``."""
        self._check_live()
        self._now += 1
        if self._waiting_since is None or self._now - self._waiting_since < self.missing_ticks:
            return []
        self._waiting_since = self._now
        t = self.prepared + 1
        stamps = self._held[t].stamps
        lacking = [k not in self._buffer for k in stamp_keys(stamps)]
        return [Send(Missing(self.epoch, self.pair, t, stamps[np.array(lacking, dtype=bool)]))]

    def step(self, msg: Any, *, checked: bool = False) -> list[Action]:
        """One message from the primary. ``checked``: ``check_message`` with this table's export
        dtype already passed (the codec runs it on every message it decodes; not twice per message)."""
        self._check_live()
        reason = None if checked else check_message(msg, self.table.export_dtype())
        if reason is None and (msg.epoch, msg.pair) != (self.epoch, self.pair):
            reason = f"epoch/pair {msg.epoch}/{msg.pair} is not {self.epoch}/{self.pair}"
        if reason is None and not isinstance(msg, Prepare | Sync | Commit | Packets):
            reason = f"{type(msg).__name__} is not for a secondary"
        if reason:
            return self._refuse(msg, reason)
        if isinstance(msg, Prepare):
            return self._on_prepare(msg)
        if isinstance(msg, Sync):
            return self._on_sync(msg)
        if isinstance(msg, Commit):
            return self._on_commit(msg)
        return self.on_packets(msg.stamps, msg.payloads)

    # -- message handlers ------------------------------------------------------------------------

    def _started(self) -> bool:
        return self._base or self._sync_batch is not None

    def _on_prepare(self, msg: Prepare) -> list[Action]:
        t = msg.batch
        if not self._started():
            # A new secondary: its Sync was overtaken. Keep the Prepare; the Sync decides what it is.
            if len(self._held) >= self.max_held:
                return self._refuse(msg, "too many prepares before the sync")
            self._held[t] = msg
            return []
        if msg.committed_upto > self.prepared:
            return self._refuse(msg, "commits a batch never staged")
        self._commit(msg.committed_upto)
        if t <= self.prepared:
            staged = self._staged.get(t)
            if isinstance(staged, Prepare) and not np.array_equal(staged.stamps, msg.stamps):
                return self._refuse(msg, "conflicts with the staged prepare")
            return [Send(self._vote())]  # retransmit: vote again (cumulative, idempotent)
        if t - self.prepared > self.max_held:
            return self._refuse(msg, "too far past the last staged batch")
        self._held[t] = msg
        out = self._advance()
        if self._held and min(self._held) > self.prepared + 1 and self._need_sent != self.prepared + 1:
            self._need_sent = self.prepared + 1
            out.append(Send(NeedFrom(self.epoch, self.pair, self.prepared + 1)))
        return out

    def _on_sync(self, msg: Sync) -> list[Action]:
        if self._started():
            if msg.batch == self._sync_batch:
                return [Send(self._vote())]
            return self._refuse(msg, "already synced")
        s = msg.batch
        self._sync_batch = s
        self._staged[s] = msg
        self.committed, self.prepared = s - 1, s
        for key, payload in zip(stamp_keys(msg.stamps), msg.payloads or (None,) * len(msg.stamps)):
            self._buffer[key] = payload
        self._held = {t: m for t, m in self._held.items() if t > s}
        return self._advance() or [Send(self._vote())]

    def _on_commit(self, msg: Commit) -> list[Action]:
        if not self._started():
            return self._refuse(msg, "commit before the sync")
        if msg.upto > self.prepared:
            return self._refuse(msg, "commits a batch never staged")
        self._commit(msg.upto)
        return [Send(self._vote())]  # the acknowledgement: the primary stops sending explicit Commits

    def _advance(self) -> list[Action]:
        """Stage held Prepares that follow the last staged batch and have all their packets."""
        if not self._started():
            return []
        staged_any = False
        while (t := self.prepared + 1) in self._held:
            msg = self._held[t]
            if any(k not in self._buffer for k in stamp_keys(msg.stamps)):
                if self._waiting_since is None:
                    self._waiting_since = self._now
                    self.waited += 1  # the Prepare came before its packets' copies
                break
            del self._held[t]
            self._staged[t] = msg
            self.prepared = t
            self._waiting_since = None
            staged_any = True
        return [Send(self._vote())] if staged_any else []

    def _commit(self, upto: int) -> None:
        for t in range(self.committed + 1, upto + 1):
            self._apply(self._staged.pop(t))
            self.committed = t

    def _apply(self, msg: Prepare | Sync) -> None:
        buf = self._buffer
        if isinstance(msg, Sync):
            table = self.table
            table.remove(table.live_rows())
            table.take_changes()
            table.import_records(msg.records)
            self.next_expected = dict(zip(msg.ne_flows.tolist(), msg.ne_next.tolist()))
            self._base = True
            ne = self.next_expected
            for key in [k for k in buf if k[1] < ne.get(k[0], 1)]:
                del buf[key]
            return
        d = msg.delta
        self.table.import_records(d.records, d.removed)
        self.next_expected.update(zip(d.ne_flows.tolist(), d.ne_next.tolist()))
        for key in stamp_keys(msg.stamps):
            buf.pop(key, None)

    def _vote(self) -> Vote:
        return Vote(self.epoch, self.pair, self.prepared, self.committed)

    def _refuse(self, msg: Any, reason: str) -> list[Action]:
        self.refused[reason] += 1
        return [Refused(msg, reason)]

    def _check_live(self) -> None:
        if self._retired:
            raise ProtocolMisuse("this secondary has taken over; it is no longer a replica")

    # -- failover --------------------------------------------------------------------------------

    def take_over(self, decision: int | None, *, replay_decided: bool = False) -> TakeOver:
        """Become primary; ``decision`` = the dead primary's commit record (None if unreadable).

        Batches <= decision were released: their staged deltas are applied
        (or, with ``replay_decided``, replayed with release suppressed).
        Batches > decision were not released: replayed and released. With
        no decision (node failure) every staged, uncommitted batch is in
        doubt: replayed and released (maybe a second time).
        """
        self._check_live()
        if decision is not None:
            if type(decision) is not int or decision < 0:
                raise ProtocolMisuse(f"take_over: decision must be None or an int >= 0, got {decision!r}")
            if decision < self.committed or decision > self.prepared:
                raise InvariantViolation(
                    f"take_over: commit record {decision} outside [{self.committed}, {self.prepared}]")
        if not self._base and (decision is None or self._sync_batch is None or decision < self._sync_batch):
            raise NotSynced("take_over: the sync to this secondary was never decided")
        if not self._base:
            self._commit(self._sync_batch)  # the sync (decided) has no replayable packets: apply it
        if decision is not None and not replay_decided:
            self._commit(decision)
        state_batch = self.committed
        in_doubt = tuple(range(self.committed + 1, self.prepared + 1)) if decision is None else ()
        replays = []
        for t in range(self.committed + 1, self.prepared + 1):
            msg = self._staged[t]
            assert isinstance(msg, Prepare)  # only a sync can be a non-Prepare, and it is applied above
            if not len(msg.stamps):
                # state alone (a bucket move's import): nothing to replay, so its state is applied. Its
                # rows and flows are the moved buckets', which no batch before it touched; the batches
                # after it that carry their packets find them (a replay would have nothing to redo)
                self._apply(msg)
                continue
            keys = stamp_keys(msg.stamps)
            replays.append(Replay(t, msg.stamps, tuple(self._buffer.pop(k) for k in keys),
                                  release=decision is None or t > decision))
        rest, rest_payloads = self._rest()
        self._retired = True
        return TakeOver(self.table, dict(self.next_expected), state_batch, tuple(replays),
                        rest, rest_payloads, self.prepared, in_doubt)

    def salvage(self) -> tuple:
        """The buffered packets (per flow in seq order), for a take-over that cannot have the state
        (``NotSynced``): the new primary starts the pair fresh but loses no packet it holds."""
        self._check_live()
        _, payloads = self._rest()
        self._retired = True
        return payloads

    def _rest(self) -> tuple[np.ndarray, tuple]:
        """Buffered packets past the replays: arrival order across flows, seq order within a flow."""
        ne = self.next_expected
        keys = [k for k in self._buffer if k[1] >= ne.get(k[0], 1)]
        slots: dict[int, list[int]] = {}
        for i, (f, _) in enumerate(keys):
            slots.setdefault(f, []).append(i)
        ordered: list[Stamp] = [(0, 0)] * len(keys)
        for f, positions in slots.items():
            for pos, key in zip(positions, sorted((keys[i] for i in positions), key=lambda k: k[1])):
                ordered[pos] = key
        if not ordered:
            return np.empty(0, dtype=STAMP_DTYPE), ()
        f, s = zip(*ordered)
        return make_stamps(f, s), tuple(self._buffer[k] for k in ordered)
