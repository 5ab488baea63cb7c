"""What the replication cores ask their driver to do, and the result of a take-over.

The driver executes a returned action list in order, each action finished
before the next starts (the order is the protocol: see PrimaryReplicator).

Crash points: each action names the point a crash right after it reaches
(``crash_point``); the receive points are named by the cores'
``received_point(msg)``. The simulation crashes at each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from deft.runtime.replication.messages import Commit, Message, Prepare, Sync, Vote


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the peer (best effort: the protocol tolerates loss)."""

    message: Message

    @property
    def crash_point(self) -> str | None:
        m = self.message
        if isinstance(m, Prepare | Sync):
            return "prepare_sent"
        if isinstance(m, Commit):
            return "commit_sent"
        if isinstance(m, Vote):
            return "voted"
        return None


@dataclass(frozen=True, slots=True)
class WriteDecision:
    """Write "batch ``batch`` (and every batch before it) is committed" to the supervisor-owned commit record.

    Must be durable against a worker crash (shared memory owned by the
    supervisor) before the next action runs; the record only ever grows.
    """

    epoch: int
    pair: int
    batch: int

    crash_point = "decision_written"


@dataclass(frozen=True, slots=True)
class Release:
    """Let batch ``batch``'s output leave the node; finished only once the packets are out.

    The output was staged where the supervisor's egress can reach it before
    ``on_batch`` (see README: a supervisor whose worker died releases every
    staged batch <= the commit record, so a decision is never lost).
    """

    batch: int

    crash_point = "released"


@dataclass(frozen=True, slots=True)
class Refused:
    """A message was ignored; ``reason`` says why (also counted in the core's ``refused``)."""

    message: Any
    reason: str

    crash_point = None


Action = Send | WriteDecision | Release | Refused


@dataclass(frozen=True, slots=True)
class Replay:
    """One batch the new primary must feed through its NF again, exactly these stamps in this order.

    release   True: hand the outputs to the egress; False: suppress them (already released)
    payloads  the buffered packets of ``stamps`` (whatever the driver gave ``on_packets``)
    """

    batch: int
    stamps: np.ndarray
    payloads: tuple
    release: bool


@dataclass(frozen=True, slots=True)
class TakeOver:
    """How a secondary continues as primary (result of ``SecondaryReplica.take_over``).

    table, next_expected  the state after batch ``state_batch``: start here
    replays    batches after ``state_batch``, in order; replay each from the
               state the previous one left (NFs are deterministic)
    rest       buffered packets beyond the last replayed batch, per-flow in
               seq order; process them normally afterwards (``rest_payloads`` aligned)
    last_batch the last batch id used; the new primary numbers on from it
    in_doubt   batches whose release is unknown (node failure); their replay
               releases them, possibly a second time (G3 allows it)
    """

    table: Any
    next_expected: dict[int, int]
    state_batch: int
    replays: tuple[Replay, ...]
    rest: np.ndarray
    rest_payloads: tuple
    last_batch: int
    in_doubt: tuple[int, ...]
