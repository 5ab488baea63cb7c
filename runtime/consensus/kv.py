"""A replicated key-value state machine with client sessions (Raft dissertation §6.3).

Every command carries ``(client, seq)``. A client numbers its commands 1, 2,
3, ... and has one entry outstanding at a time: a single command, or a batch
(``encode_batch``, group commit) that may hold several of its commands. The
state machine keeps, per client, the highest seq applied and the results of
its commands in the latest entry that applied any. A retried entry or command
(proposed again after a timeout or a leader change, so it may sit in the log
twice) is applied once and every copy returns the first results. A command
older than that returns ``STALE`` (its client has moved on; nobody waits).

Commands and snapshots are JSON (orjson); values must be JSON-serialisable.
Operations: get, put, delete, incr, add_to_set, compare_and_set. For a batch
``apply`` returns the list of results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from deft.runtime.consensus.errors import ConsensusError

STALE = "__stale__"


class BadCommand(ConsensusError, ValueError):
    """A command is malformed; raised at encode time so bad input never reaches the log."""


@dataclass(frozen=True, slots=True)
class Command:
    client: str
    seq: int
    op: str
    key: str
    args: tuple[Any, ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        if self.op not in _OPS:
            raise BadCommand(f"unknown op {self.op!r}")
        if self.seq < 1:
            raise BadCommand("seq starts at 1")
        return {"c": self.client, "s": self.seq, "o": self.op, "k": self.key, "a": list(self.args)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Command:
        return Command(d["c"], d["s"], d["o"], d["k"], tuple(d["a"]))

    @staticmethod
    def decode(data: bytes) -> Command:
        return Command.from_dict(orjson.loads(data))


def encode_batch(commands: list[Command]) -> bytes:
    """One log entry carrying several commands, applied in order."""
    return orjson.dumps([c.as_dict() for c in commands])


def decode_commands(data: bytes) -> list[Command]:
    """The commands in an entry, whether it holds one (``encode``) or a batch."""
    d = orjson.loads(data)
    return [Command.from_dict(x) for x in d] if isinstance(d, list) else [Command.from_dict(d)]


def _get(st: dict[str, Any], k: str) -> Any:
    return st.get(k)


def _put(st: dict[str, Any], k: str, v: Any) -> None:
    st[k] = v


def _delete(st: dict[str, Any], k: str) -> bool:
    return st.pop(k, None) is not None


def _incr(st: dict[str, Any], k: str, n: int = 1) -> int:
    st[k] = int(st.get(k) or 0) + n
    return st[k]


def _add_to_set(st: dict[str, Any], k: str, member: Any) -> bool:
    cur = st.get(k) or []
    if member in cur:
        return False
    st[k] = sorted([*cur, member], key=orjson.dumps)  # deterministic order on every replica
    return True


def _cas(st: dict[str, Any], k: str, expected: Any, new: Any) -> bool:
    if st.get(k) != expected:
        return False
    st[k] = new
    return True


_OPS: dict[str, Callable[..., Any]] = {
    "get": _get, "put": _put, "delete": _delete, "incr": _incr,
    "add_to_set": _add_to_set, "compare_and_set": _cas,
}


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        #: client -> (highest applied seq, {seq: result} of its commands in the latest entry
        #: that applied any of them): enough to answer a retry of that entry or command.
        self.sessions: dict[str, tuple[int, dict[int, Any]]] = {}

    def apply(self, payload: bytes) -> Any:
        """Apply a committed entry: one command's result, or a list for a batch.

        Each command takes effect once per (client, seq); a retry returns the first result.
        """
        d = orjson.loads(payload)
        fresh: set[str] = set()  # clients whose result window this entry replaced
        if isinstance(d, list):
            return [self._apply(Command.from_dict(x), fresh) for x in d]
        return self._apply(Command.from_dict(d), fresh)

    def _apply(self, cmd: Command, fresh: set[str]) -> Any:
        session = self.sessions.get(cmd.client)
        if session is not None:
            if cmd.seq in session[1]:
                return session[1][cmd.seq]
            if cmd.seq <= session[0]:
                return STALE
        result = _OPS[cmd.op](self.data, cmd.key, *cmd.args)
        if cmd.client in fresh and session is not None:
            window = session[1]
        else:
            fresh.add(cmd.client)
            window = {}
        window[cmd.seq] = result
        self.sessions[cmd.client] = (cmd.seq, window)
        return result

    def snapshot(self) -> bytes:
        """Data and the dedup table together: a restored replica must still dedup retries."""
        sessions = {c: [top, sorted(w.items())] for c, (top, w) in self.sessions.items()}
        return orjson.dumps({"data": self.data, "sessions": sessions}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(cls, blob: bytes) -> KVStateMachine:
        d = orjson.loads(blob)
        sm = cls()
        sm.data = d["data"]
        sm.sessions = {c: (top, {seq: r for seq, r in w}) for c, (top, w) in d["sessions"].items()}
        return sm
