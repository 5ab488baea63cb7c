"""Encoding of Raft messages as ZeroMQ multipart frames (no zmq import here).

Frames: ``[b"raft1"][header: orjson][entry data]...[snapshot data]?``. The
header holds every scalar field plus ``(term, index, kind)`` per entry; the
entry payloads travel as raw frames so binary data is never re-encoded.
Malformed input raises WireError (the driver counts and drops it).
"""

from __future__ import annotations

from typing import Any

import orjson

from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.messages import Entry, EntryKind, Message, MsgType, Snapshot
from deft.runtime.errors import WireError

MAGIC = b"raft1"


def encode(m: Message) -> list[bytes]:
    header: dict[str, Any] = {
        "t": m.type.value, "s": m.src, "d": m.dst, "T": m.term, "lt": m.log_term, "i": m.index,
        "c": m.commit, "r": m.reject, "h": m.reject_hint, "x": m.transfer,
        "ctx": m.context.hex(),
        "e": [[e.term, e.index, int(e.kind)] for e in m.entries],
    }
    frames = [MAGIC, b"", *(e.data for e in m.entries)]
    if m.snapshot is not None:
        conf = m.snapshot.membership
        header["S"] = [m.snapshot.index, m.snapshot.term,
                       None if conf is None else [list(conf.voters), list(conf.learners)]]
        frames.append(m.snapshot.data)
    frames[1] = orjson.dumps(header)
    return frames


def decode(frames: list[bytes]) -> Message:
    if len(frames) < 2 or frames[0] != MAGIC:
        raise WireError("raft: not a raft1 frame")
    try:
        h = orjson.loads(frames[1])
        metas = h["e"]
        snap_meta = h.get("S")
        expected = 2 + len(metas) + (1 if snap_meta is not None else 0)
        if len(frames) != expected:
            raise WireError(f"raft: {len(frames)} frames, expected {expected}")
        entries = tuple(Entry(int(t), int(i), bytes(frames[2 + k]), EntryKind(int(kd)))
                        for k, (t, i, kd) in enumerate(metas))
        snapshot = None
        if snap_meta is not None:
            conf = snap_meta[2]
            membership = None if conf is None else Membership(tuple(conf[0]), tuple(conf[1]))
            snapshot = Snapshot(int(snap_meta[0]), int(snap_meta[1]), bytes(frames[-1]), membership)
        return Message(MsgType(h["t"]), int(h["s"]), int(h["d"]), int(h["T"]),
                       log_term=int(h["lt"]), index=int(h["i"]), entries=entries,
                       commit=int(h["c"]), reject=bool(h["r"]), reject_hint=int(h["h"]),
                       snapshot=snapshot, transfer=bool(h["x"]), context=bytes.fromhex(h["ctx"]))
    except WireError:
        raise
    except (orjson.JSONDecodeError, KeyError, IndexError, ValueError, TypeError) as e:
        raise WireError(f"raft: bad header: {e}") from e
