"""Encoding of Raft messages as one binary ZeroMQ frame (no zmq import here).

Layout (little endian)::

    b"raft2" | u8 type | q src | q dst | q term | q log_term | q index | q commit
             | u8 flags (1 reject, 2 transfer, 4 snapshot) | q reject_hint
             | u32 context length | u32 entry count | context
             | per entry: q term | q index | u8 kind | u32 length | data
             | snapshot (flag 4): q index | q term | u32 membership length
             |                   | membership (Membership.encode(), empty if None) | data (the rest)

One frame and fixed-size struct fields instead of an orjson header plus one
frame per entry: a message costs one ``send``/``recv`` and no JSON or hex on
the hot path (a single-op commit exchanges four messages on its critical path).
Entry payloads are copied once, binary as they are. Malformed input (including
a frame of the older multipart ``raft1`` format) raises WireError; the driver
counts and drops it.
"""

from __future__ import annotations

import struct

from deft.runtime.consensus.errors import InvalidRequest
from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.messages import Entry, EntryKind, Message, MsgType, Snapshot
from deft.runtime.errors import WireError

MAGIC = b"raft2"
_HEAD = struct.Struct("<5sBqqqqqqBqII")
_ENTRY = struct.Struct("<qqBI")
_SNAP = struct.Struct("<qqI")
_TYPES = tuple(MsgType)
_CODE = {t: k for k, t in enumerate(_TYPES)}
_KINDS = tuple(EntryKind)
_REJECT, _TRANSFER, _SNAPSHOT = 1, 2, 4


def encode(m: Message) -> bytes:
    flags = (_REJECT if m.reject else 0) | (_TRANSFER if m.transfer else 0)
    snap = m.snapshot
    if snap is not None:
        flags |= _SNAPSHOT
    head = _HEAD.pack(MAGIC, _CODE[m.type], m.src, m.dst, m.term, m.log_term, m.index, m.commit,
                      flags, m.reject_hint, len(m.context), len(m.entries))
    if not m.entries and snap is None:
        return head + m.context if m.context else head
    parts = [head, m.context]
    for e in m.entries:
        parts.append(_ENTRY.pack(e.term, e.index, e.kind, len(e.data)))
        parts.append(e.data)
    if snap is not None:
        conf = b"" if snap.membership is None else snap.membership.encode()
        parts += (_SNAP.pack(snap.index, snap.term, len(conf)), conf, snap.data)
    return b"".join(parts)


def decode(frame: bytes) -> Message:
    try:
        (magic, code, src, dst, term, log_term, index, commit, flags, hint, nctx,
         nent) = _HEAD.unpack_from(frame)
        if magic != MAGIC:
            raise WireError("raft: not a raft2 frame")
        mtype = _TYPES[code]
        pos = _HEAD.size
        end = pos + nctx
        context = frame[pos:end]
        if len(context) != nctx:
            raise WireError("raft: context past the end of the frame")
        pos = end
        entries: tuple[Entry, ...] = ()
        if nent:
            ents = []
            esize = _ENTRY.size
            for _ in range(nent):
                et, ei, kind, n = _ENTRY.unpack_from(frame, pos)
                pos += esize
                data = frame[pos:pos + n]
                if len(data) != n:
                    raise WireError("raft: entry past the end of the frame")
                pos += n
                ents.append(Entry(et, ei, data, _KINDS[kind]))
            entries = tuple(ents)
        snapshot = None
        if flags & _SNAPSHOT:
            si, st, nconf = _SNAP.unpack_from(frame, pos)
            pos += _SNAP.size
            conf = frame[pos:pos + nconf]
            if len(conf) != nconf:
                raise WireError("raft: snapshot membership past the end of the frame")
            pos += nconf
            snapshot = Snapshot(si, st, frame[pos:], Membership.decode(conf) if conf else None)
            pos = len(frame)
        if pos != len(frame):
            raise WireError(f"raft: {len(frame) - pos} stray bytes after the message")
        return Message(mtype, src, dst, term, log_term=log_term, index=index, entries=entries,
                       commit=commit, reject=bool(flags & _REJECT), reject_hint=hint,
                       snapshot=snapshot, transfer=bool(flags & _TRANSFER), context=context)
    except WireError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, KeyError, InvalidRequest) as e:
        raise WireError(f"raft: bad frame: {e}") from e
