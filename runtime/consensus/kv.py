"""A replicated key-value state machine with client sessions (Raft dissertation §6.3).

Every command carries ``(client, seq)``. A client has at most one command
outstanding and numbers them 1, 2, 3, ...; the state machine keeps, per
client, the last seq it applied and that command's result. A retried command
(the same seq proposed again after a timeout or a leader change, so it may sit
in the log twice) is applied once and every copy returns the first result.
A command older than the last one applied returns ``STALE`` (its client has
already moved on, so nobody waits for it).

Commands and snapshots are JSON (orjson); values must be JSON-serialisable.
Operations: get, put, delete, incr, add_to_set, compare_and_set.
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
        if self.op not in _OPS:
            raise BadCommand(f"unknown op {self.op!r}")
        if self.seq < 1:
            raise BadCommand("seq starts at 1")
        return orjson.dumps({"c": self.client, "s": self.seq, "o": self.op, "k": self.key,
                             "a": list(self.args)})

    @staticmethod
    def decode(data: bytes) -> Command:
        d = orjson.loads(data)
        return Command(d["c"], d["s"], d["o"], d["k"], tuple(d["a"]))


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
        #: client -> (last applied seq, its result)
        self.sessions: dict[str, tuple[int, Any]] = {}

    def apply(self, payload: bytes) -> Any:
        """Apply one committed command exactly once per (client, seq); return its result."""
        cmd = Command.decode(payload)
        last = self.sessions.get(cmd.client)
        if last is not None:
            if cmd.seq == last[0]:
                return last[1]
            if cmd.seq < last[0]:
                return STALE
        result = _OPS[cmd.op](self.data, cmd.key, *cmd.args)
        self.sessions[cmd.client] = (cmd.seq, result)
        return result

    def snapshot(self) -> bytes:
        """Data and the dedup table together: a restored replica must still dedup retries."""
        return orjson.dumps({"data": self.data, "sessions": self.sessions},
                            option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(cls, blob: bytes) -> KVStateMachine:
        d = orjson.loads(blob)
        sm = cls()
        sm.data = d["data"]
        sm.sessions = {c: (s, r) for c, (s, r) in d["sessions"].items()}
        return sm
