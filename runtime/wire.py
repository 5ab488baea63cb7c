"""Frames between DEFT processes: one protocol module (kinds, headers, validation).

Every message is ``[kind: 1 byte][header: orjson object]`` (ZMQ multipart);
decoding checks the kind and the header's fields and raises WireError naming
what is wrong, so a receiver counts and ignores garbage instead of crashing.

Kinds:
  HEARTBEAT  node supervisor -> controller, every heartbeat_ms:
             {node, pid, seq, control, fabric, replication, buckets, routes_epoch,
              instances: [{id, index, pid, alive, restarts, ready?, lag?}], late_ms?}
             (late_ms: how long after its time the beat went, by the node's clock)
  FAILED     node supervisor -> controller, at once when a child dies:
             {node, process, pid, exit, decisions?}; for an NF worker, ``decisions``
             maps each pair it replicated to the last batch it released (its commit
             record, read after the supervisor finished an interrupted release)
  PACKETS    an io's stamping unit -> a worker on another node (its PULL): a batch of
             stamped packet records {epoch, instance, n, width}, then one frame of
             n x width bytes: the first ``width`` bytes of each record (header + the
             longest frame in the batch)
  COPIES     the same for the copies a secondary keeps (``dup`` = 1), to the worker's 2PC
             ROUTER (their kind byte is one the replication codec does not use)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from deft.runtime.dataplane.packet import FEW, HEADER_GAPS, HEADER_SIZE, RECORD_SIZE, raw_records, record_payloads
from deft.runtime.errors import WireError

HEARTBEAT = b"H"
FAILED = b"F"
PACKETS = b"P"
COPIES = b"D"
KINDS = {HEARTBEAT: "heartbeat", FAILED: "failed", PACKETS: "packets", COPIES: "copies"}

_REQUIRED: dict[bytes, dict[str, type | tuple[type, ...]]] = {
    HEARTBEAT: {"node": str, "pid": int, "seq": int, "control": str, "fabric": str, "replication": str,
                "buckets": int,
                "routes_epoch": int, "instances": list},
    FAILED: {"node": str, "process": str, "pid": int, "exit": (int, type(None))},
    PACKETS: {"epoch": int, "instance": int, "n": int, "width": int},
    COPIES: {"epoch": int, "instance": int, "n": int, "width": int},
}
_INSTANCE = {"id": str, "index": int, "pid": (int, type(None)), "alive": bool, "restarts": int}


def encode(kind: bytes, header: dict[str, Any]) -> list[bytes]:
    return [kind, orjson.dumps(header)]


def decode(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """(kind, header) of a message; WireError on anything malformed.

    PACKETS messages have a third frame (the records), checked by ``decode_packets``.
    """
    if not frames or len(frames) != (3 if frames[0] in (PACKETS, COPIES) else 2):
        raise WireError(f"wrong number of frames ({len(frames)})")
    kind, raw = frames[0], frames[1]
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
            if not isinstance(inst.get("ready", False), bool):
                raise WireError(f"heartbeat instances[{i}]: 'ready' has the wrong type")
            for name in ("lag", "busy_ns", "in_ring"):
                if type(inst.get(name, 0)) is not int or inst.get(name, 0) < 0:
                    raise WireError(f"heartbeat instances[{i}]: {name!r} must be an int >= 0")
            pairs = inst.get("pairs", {})
            if not isinstance(pairs, dict) or not all(
                    k.isascii() and k.isdigit() and type(v) is int and v >= 0 for k, v in pairs.items()):
                raise WireError(f"heartbeat instances[{i}]: 'pairs' must map pair numbers to counts >= 0")
    elif kind == FAILED and "decisions" in header:
        decisions = header["decisions"]
        if not isinstance(decisions, dict) or not all(
                k.isascii() and k.isdigit() and type(v) is int and v >= 0 for k, v in decisions.items()):
            raise WireError("failed: 'decisions' must map pair numbers to batches >= 0")
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


def encode_packets(epoch: int, instance: int, records: np.ndarray, index: np.ndarray | None = None,
                   kind: bytes = PACKETS) -> list:
    """PACKETS (or COPIES) frames for ``records`` (or ``records[index]``): only the bytes in use travel."""
    n = len(records) if index is None else len(index)
    src = raw_records(records) if n <= FEW else None
    if src is not None:   # a few records: their used bytes sliced out and joined, no gather
        rows = range(n) if index is None else index.tolist()
        lengths = records["frame_len"].tolist()
        width = HEADER_SIZE + max(lengths[i] for i in rows)
        raw = _gaps_cleared(b"".join(src[i * RECORD_SIZE: i * RECORD_SIZE + width] for i in rows), width)
    else:
        sel = records if index is None else records[index]
        width = HEADER_SIZE + int(sel["frame_len"].max())
        raw = np.array(sel.view(np.uint8).reshape(n, RECORD_SIZE)[:, :width])   # a copy: its gaps are zeroed
        for start, end in HEADER_GAPS:
            raw[:, start:end] = 0
    header = {"epoch": epoch, "instance": instance, "n": n, "width": width}
    return [kind, orjson.dumps(header), raw]


def _gaps_cleared(data: bytes, width: int) -> bytearray:
    """``data`` (records of ``width`` bytes each) with every record's header gaps zeroed: a gather
    leaves them as whatever memory held before, and nothing but the fields leaves the process."""
    raw = bytearray(data)
    for at in range(0, len(raw), width):
        for start, end in HEADER_GAPS:
            raw[at + start: at + end] = bytes(end - start)
    return raw


def payload_bytes(record: np.ndarray) -> bytes:
    """One packet record (a 1-record array) as a 2PC payload (``packet.record_payloads``: header and the
    frame bytes in use) with its header gaps zeroed, as ``encode_packets``: it leaves the process."""
    payload = record_payloads(record)[0]
    return bytes(_gaps_cleared(payload, len(payload)))


def decode_packets(frames: list[bytes], n_instances: int, out: np.ndarray) -> tuple[dict[str, Any], int]:
    """Check a PACKETS message and unpack its records into ``out[:n]``; (header, n)."""
    kind, header = decode(frames)
    if kind not in (PACKETS, COPIES):
        raise WireError(f"expected packets, got {KINDS[kind]}")
    n, width, instance = header["n"], header["width"], header["instance"]
    if not 0 < n <= len(out):
        raise WireError(f"packets: n={n} outside 1..{len(out)}")
    if not HEADER_SIZE <= width <= RECORD_SIZE:
        raise WireError(f"packets: width={width} outside {HEADER_SIZE}..{RECORD_SIZE}")
    if not 0 <= instance < n_instances:
        raise WireError(f"packets: no instance {instance} here")
    data = frames[2]
    data = data.buffer if hasattr(data, "buffer") else data   # a zmq.Frame received with copy=False
    if len(data) != n * width:
        raise WireError(f"packets: {len(data)} bytes for {n} x {width}")
    rows = out[:n]
    dst = raw_records(rows) if n <= FEW else None
    if dst is not None:   # a quiet sender's message: slices and Python checks, not ~10 numpy calls
        src = memoryview(data).cast("B")
        for i in range(n):
            dst[i * RECORD_SIZE: i * RECORD_SIZE + width] = src[i * width: (i + 1) * width]
        longest, unstamped = max(rows["frame_len"].tolist()), 0 in rows["flow_id"].tolist()
        mixed = any((d != 0) != (kind == COPIES) for d in rows["dup"].tolist())
    else:
        raw = rows.view(np.uint8).reshape(n, RECORD_SIZE)
        raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
        longest, unstamped = int(rows["frame_len"].max()), bool((rows["flow_id"] == 0).any())
        mixed = bool(((rows["dup"] != 0) != (kind == COPIES)).any())
    if longest > width - HEADER_SIZE or unstamped:
        raise WireError("packets: a record is longer than its width or unstamped")
    if mixed:
        raise WireError("packets: copies and originals must travel as their own kinds")
    return header, n
