"""Ready: the batch of work RaftCore hands to its driver (the persist-before-send contract)."""

from __future__ import annotations

from dataclasses import dataclass

from deft.runtime.consensus.messages import Entry, HardState, Message, Snapshot


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex: answer the read ``context`` once ``applied >= index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the driver must do, in this order, then call ``advance(rd)``.

    0. If ``snapshot`` is set (sent by the leader): persist it, replacing the
       stored log, and restore the state machine from ``snapshot.data``.
    1. Persist ``entries`` (replacing any stored entries from entries[0].index
       on) and ``hard_state`` (if not None), durably (fsync): persist entries
       and hard_state BEFORE sending messages, because votes and append acks
       in ``messages`` promise that they are durable.
    2. Send ``messages`` (any may be lost; Raft retries).
    3. Apply ``committed`` to the state machine, in order. Only NORMAL entries
       carry commands: NOOP entries are empty and CONF entries already took
       effect inside the core. They may include entries from step 1.
       Steps 2 and 3 may be swapped (on a leader, ``RaftDriver`` applies first,
       so clients are answered before the appends that spread the new commit
       index go out): the entries are committed and nothing sent depends on
       applying.
    4. ``read_states``: reads confirmed by ReadIndex; serve each from the local
       state machine once it has applied ``index`` (maybe in a later Ready).
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    committed: tuple[Entry, ...]
    messages: tuple[Message, ...]
    snapshot: Snapshot | None = None
    read_states: tuple[ReadState, ...] = ()
