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
Operations: get, put, delete, incr, add_to_set, compare_and_set,
add_to_window (a set whose members expire: the sliding window of a scan
detector) and multi. For a batch ``apply`` returns the list of results.

An NF batch's global operations are one ``multi`` command (``batch_entry``):
one (client, seq) for the whole batch, its result the list of the operations'
results. So the batch is deduplicated as a unit: a re-proposal (a secondary
replaying the batch after a failover, with the same client and seq) returns
the first results and changes nothing, and ``STALE`` once the client's next
batch was applied (``batch_results`` spreads it over the operations). An
operation inside ``multi`` that fails (a type mismatch) yields
``{"error": <exception name>}`` and the others still apply, on every replica
alike. A batch entry may carry ``meta`` (opaque JSON: which packets, in which
NF calls, made the operations); the state machine keeps the latest entry's
meta per client.

Fencing (G4 across a failover). ``fence_entry(client, seq, prefix)`` closes
every session named ``<prefix>/...`` (a dead primary's): from that entry on,
a new command of such a session is refused (``FENCED``, nothing applied),
while a retry of what was applied still gets its first results. The fence
returns what those sessions last applied (seq, results, meta). Because the
log orders everything, the new primary that proposes the fence learns
exactly which of the dead primary's batches took effect, and no proposal
still in flight from it can take effect afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from deft.runtime.consensus.errors import ConsensusError

STALE = "__stale__"
FENCED = "__fenced__"   # a command of a session closed by a fence: not applied
SESSION_TTL_ENTRIES = 1_000_000   # a client silent for this many log entries is forgotten (a retry
                                  # later than that would be applied again)
EXPIRE_EVERY_ENTRIES = 1024


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
        if self.op == "multi":
            _check_multi(self.args)
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


def batch_entry(client: str, seq: int, ops: Sequence[Sequence[Any]], meta: Any = None) -> bytes:
    """One log entry with all of a batch's operations ``[(op, key, args), ...]`` (group commit).

    The entry is a single ``multi`` command under one session slot ``(client, seq)``:
    ``KVStateMachine.apply`` returns the list of results (aligned with ``ops``), a
    re-proposal of the same ``(client, seq)`` returns the first list without applying
    anything, and ``STALE`` after the client's next entry. ``meta`` (JSON) is kept with the
    client's session (``fence``). BadCommand for malformed ops.
    """
    items = [list(item) if isinstance(item, (list, tuple)) else item for item in ops]
    args = (items,) if meta is None else (items, meta)
    return Command(client, seq, "multi", "", args).encode()   # BadCommand from _check_multi


def fence_entry(client: str, seq: int, prefix: str) -> bytes:
    """An entry closing the sessions ``<prefix>/...``; its result: ``{client: {"seq", "results", "meta"}}``
    of what each of them last applied (see the module docstring)."""
    if not prefix or not isinstance(prefix, str):
        raise BadCommand("fence: the prefix must be a non-empty string")
    return Command(client, seq, "fence", prefix).encode()


def session_prefix_of(client: str) -> str:
    """The name a fence closes ``client`` by: everything before its last ``/``."""
    return client.rpartition("/")[0]


def batch_results(result: Any, n: int) -> list[Any]:
    """The per-operation results of a ``batch_entry``: ``STALE`` for each if the entry was stale or fenced."""
    if result == STALE or result == FENCED:
        return [STALE] * n
    if not isinstance(result, list) or len(result) != n:
        raise ValueError(f"expected {n} results, got {result!r}")
    return result


def _check_multi(args: tuple[Any, ...]) -> None:
    if len(args) not in (1, 2) or not isinstance(args[0], (list, tuple)):
        raise BadCommand("multi takes the list of [op, key, args] (and optional meta)")
    for item in args[0]:
        if not (isinstance(item, (list, tuple)) and len(item) == 3):
            raise BadCommand(f"multi: expected [op, key, args], got {item!r}")
        op, key, a = item
        if op not in _OPS or op in ("multi", "fence"):
            raise BadCommand(f"multi: unknown op {op!r}")
        if not isinstance(key, str) or not isinstance(a, (list, tuple)):
            raise BadCommand(f"multi: bad key or args in {item!r}")


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


def _add_to_window(st: dict[str, Any], k: str, member: Any, now_ns: int, window_ns: int) -> int:
    """Insert ``member`` seen at ``now_ns``, forget members last seen before ``now_ns - window_ns``;
    return the set's size. Stored as ``{member: last_ns}`` (member as a string)."""
    if not isinstance(member, str):
        member = orjson.dumps(member).decode()
    cur = st.get(k)
    if cur is None:
        cur = st[k] = {}
    elif not isinstance(cur, dict):
        raise TypeError(f"{k!r} holds no window")
    now_ns, cutoff = int(now_ns), int(now_ns) - int(window_ns)
    if cur.get(member, now_ns) <= now_ns:   # keep the newest time (instances' clocks differ)
        cur[member] = now_ns
    old = [m for m, t in cur.items() if t < cutoff]   # the whole set: order-independent, so
    for m in old:                                      # a restored replica evicts alike
        del cur[m]
    return len(cur)


def _multi(st: dict[str, Any], _k: str, ops: list[list[Any]], _meta: Any = None) -> list[Any]:
    out: list[Any] = []
    for op, key, args in ops:
        try:
            out.append(_OPS[op](st, key, *args))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # same on every replica
            out.append({"error": type(exc).__name__})
    return out


_OPS: dict[str, Callable[..., Any]] = {
    "get": _get, "put": _put, "delete": _delete, "incr": _incr,
    "add_to_set": _add_to_set, "compare_and_set": _cas,
    "add_to_window": _add_to_window, "multi": _multi,
    "fence": None,   # applied by KVStateMachine: it works on the sessions, not the data
}


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        #: client -> (highest applied seq, {seq: result} of its commands in the latest entry
        #: that applied any of them): enough to answer a retry of that entry or command.
        self.sessions: dict[str, tuple[int, dict[int, Any]]] = {}
        #: client -> log index of its newest entry (when the caller gives indices): sessions idle for
        #: SESSION_TTL_ENTRIES entries are forgotten, or every operator command and every failover
        #: (new session names) would grow the table for ever. Decided by log index: every replica
        #: forgets the same sessions at the same entry.
        self.last_index: dict[str, int] = {}
        #: client -> [seq, meta] of its latest batch entry that carried meta (what a fence returns)
        self.meta: dict[str, list[Any]] = {}
        #: session prefixes closed by a fence -> log index of the fence (forgotten like sessions)
        self.fenced: dict[str, int] = {}

    def apply(self, payload: bytes, index: int | None = None) -> Any:
        """Apply a committed entry (at log ``index``): one command's result, or a list for a batch.

        Each command takes effect once per (client, seq); a retry returns the first result.
        """
        return self.apply_decoded(orjson.loads(payload), index)

    def apply_decoded(self, d: Any, index: int | None = None) -> Any:
        """``apply`` of an entry already decoded (``orjson.loads`` of its payload)."""
        fresh: set[str] = set()  # clients whose result window this entry replaced
        commands = [Command.from_dict(x) for x in d] if isinstance(d, list) else [Command.from_dict(d)]
        results = [self._apply(cmd, fresh, index) for cmd in commands]
        if index is not None:
            for cmd in commands:
                self.last_index[cmd.client] = index
            if index % EXPIRE_EVERY_ENTRIES == 0:
                self._expire(index)
        return results if isinstance(d, list) else results[0]

    def _expire(self, index: int) -> None:
        old = [c for c, i in self.last_index.items() if i < index - SESSION_TTL_ENTRIES]
        for client in old:
            del self.last_index[client]
            self.sessions.pop(client, None)
            self.meta.pop(client, None)
        for prefix in [p for p, i in self.fenced.items() if i < index - SESSION_TTL_ENTRIES]:
            del self.fenced[prefix]

    def _apply(self, cmd: Command, fresh: set[str], index: int | None = None) -> Any:
        session = self.sessions.get(cmd.client)
        if session is not None:
            if cmd.seq in session[1]:
                return session[1][cmd.seq]
            if cmd.seq <= session[0]:
                return STALE
        if self.fenced and session_prefix_of(cmd.client) in self.fenced:
            return FENCED   # not recorded: every later copy is refused alike
        if cmd.op == "fence":
            result = self._fence(cmd.key, index)
        else:
            result = _OPS[cmd.op](self.data, cmd.key, *cmd.args)
            if cmd.op == "multi" and len(cmd.args) == 2:
                self.meta[cmd.client] = [cmd.seq, cmd.args[1]]
        if cmd.client in fresh and session is not None:
            window = session[1]
        else:
            fresh.add(cmd.client)
            window = {}
        window[cmd.seq] = result
        self.sessions[cmd.client] = (cmd.seq, window)
        return result

    def _fence(self, prefix: str, index: int | None) -> dict[str, Any]:
        """Close the sessions ``<prefix>/...``; what each applied last (its results and meta)."""
        self.fenced[prefix] = index if index is not None else 0
        out: dict[str, Any] = {}
        for client, (top, window) in self.sessions.items():
            if session_prefix_of(client) == prefix:
                meta = self.meta.get(client)
                out[client] = {"seq": top, "results": window.get(top),
                               "meta": meta[1] if meta is not None and meta[0] == top else None}
        return out

    def snapshot(self) -> bytes:
        """Data and the dedup table together: a restored replica must still dedup retries."""
        sessions = {c: [top, sorted(w.items())] for c, (top, w) in self.sessions.items()}
        return orjson.dumps({"data": self.data, "sessions": sessions, "last_index": self.last_index,
                             "meta": self.meta, "fenced": self.fenced}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(cls, blob: bytes) -> KVStateMachine:
        d = orjson.loads(blob)
        sm = cls()
        sm.data = d["data"]
        sm.sessions = {c: (top, {seq: r for seq, r in w}) for c, (top, w) in d["sessions"].items()}
        sm.last_index = dict(d.get("last_index", {}))
        sm.meta = dict(d.get("meta", {}))
        sm.fenced = dict(d.get("fenced", {}))
        return sm
