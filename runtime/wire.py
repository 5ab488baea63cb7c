"""Frames between DEFT processes: one protocol module (kinds, headers, validation).

Every message is ``[kind: 1 byte][header: orjson object]`` (ZMQ multipart);
decoding checks the kind and the header's fields and raises WireError naming
what is wrong, so a receiver counts and ignores garbage instead of crashing.

Kinds:
  HEARTBEAT  node supervisor -> controller, every heartbeat_ms:
             {node, pid, seq, control, instances: [{id, index, pid, alive, restarts}]}
  FAILED     node supervisor -> controller, at once when a child dies:
             {node, process, pid, exit}
"""

from __future__ import annotations

from typing import Any

import orjson

from deft.runtime.errors import WireError

HEARTBEAT = b"H"
FAILED = b"F"
KINDS = {HEARTBEAT: "heartbeat", FAILED: "failed"}

_REQUIRED: dict[bytes, dict[str, type | tuple[type, ...]]] = {
    HEARTBEAT: {"node": str, "pid": int, "seq": int, "control": str, "instances": list},
    FAILED: {"node": str, "process": str, "pid": int, "exit": (int, type(None))},
}
_INSTANCE = {"id": str, "index": int, "pid": (int, type(None)), "alive": bool, "restarts": int}


def encode(kind: bytes, header: dict[str, Any]) -> list[bytes]:
    return [kind, orjson.dumps(header)]


def decode(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """(kind, header) of a message; WireError on anything malformed."""
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    kind, raw = frames
    if kind not in _REQUIRED:
        raise WireError(f"unknown kind {kind[:8]!r}")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise WireError(f"{KINDS[kind]}: header is not JSON") from None
    if not isinstance(header, dict):
        raise WireError(f"{KINDS[kind]}: header is not an object")
    _check_fields(KINDS[kind], header, _REQUIRED[kind])
    if kind == HEARTBEAT:
        for i, inst in enumerate(header["instances"]):
            if not isinstance(inst, dict):
                raise WireError(f"heartbeat: instances[{i}] is not an object")
            _check_fields(f"heartbeat instances[{i}]", inst, _INSTANCE)
    return kind, header


def _check_fields(what: str, obj: dict, fields: dict) -> None:
    for name, types in fields.items():
        if name not in obj:
            raise WireError(f"{what}: missing {name!r}")
        value = obj[name]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise WireError(f"{what}: {name!r} has the wrong type")
        if not isinstance(value, types):
            raise WireError(f"{what}: {name!r} has the wrong type")
