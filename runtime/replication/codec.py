"""Wire codec of the replication messages: ZeroMQ multipart frames (no zmq import here).

Frame layout (the project's ``[kind][orjson header]`` convention of
``deft.runtime.wire``, followed by raw array frames)::

    [kind: 1 byte][header: orjson object][array frame]...[payload lengths][payload blob]

kind    one byte per message type (``KINDS``)
header  the message's scalar fields, and for each array field its length in
        items (not bytes), under the field's own name; nothing else
arrays  one frame per numpy array field, in the order of ``_SPECS``, holding
        the array's raw little-endian bytes: ``stamps`` as ``STAMP_DTYPE``,
        ``records`` as the NF's export dtype (the ``Codec``'s
        ``records_dtype``), ``removed``/``ne_flows``/``ne_next`` as ``<u8``
payload Sync and Packets only: header ``payloads`` is null (no frames) or the
        number of payloads n; then a frame of n ``<u8`` byte lengths and one
        frame with the payloads concatenated. Payloads are bytes on the wire.

=========  ====  ==========================================  =====================================
message    kind  header                                      frames after the header
=========  ====  ==========================================  =====================================
Prepare    P     epoch pair batch committed_upto             stamps records removed ne_flows ne_next
                 stamps records removed ne_flows ne_next
Sync       S     epoch pair batch records ne_flows ne_next   records ne_flows ne_next stamps
                 stamps payloads                             [lengths blob]
Commit     C     epoch pair upto                             -
Packets    K     epoch pair batch stamps payloads            stamps [lengths blob]
Vote       V     epoch pair batch committed                  -
NeedFrom   N     epoch pair batch                            -
Missing    M     epoch pair batch stamps                     stamps
=========  ====  ==========================================  =====================================

Contracts:

* ``encode`` returns zero-copy views of the message's arrays (send them with
  ``copy=False``); the arrays must not change until the frames are sent. The
  cores never mutate a message's arrays (they keep them for retransmits).
* ``decode`` accepts bytes or any buffer (``zmq.Frame`` with ``copy=False``);
  its arrays are read-only views of the frames. It raises ``WireError``, and
  nothing else, for anything a garbled or hostile peer can send: unknown
  kind, wrong frame count, a header that is not a JSON object, missing,
  unexpected or wrongly typed fields, negative or absurd numbers, array frames
  whose size is not a whole number of items or not the declared length, and
  finally whatever ``check_message`` refuses (with its reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from deft.runtime.errors import WireError
from deft.runtime.replication.errors import ProtocolMisuse
from deft.runtime.replication.messages import (
    STAMP_DTYPE,
    Commit,
    Delta,
    Message,
    Missing,
    NeedFrom,
    Packets,
    Prepare,
    Sync,
    Vote,
    check_message,
)

U8 = np.dtype("<u8")
MAX_ID = 2**63 - 1       # epochs, pairs, batch ids: anything larger is garbage, not a long run
MAX_ITEMS = 1 << 24      # items per array (16 Mi); the socket's maxmsgsize bounds the bytes


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: bytes
    cls: type
    scalars: tuple[str, ...]
    arrays: tuple[str, ...]      # frame order
    payloads: bool = False


_SPECS = (
    _Spec(b"P", Prepare, ("epoch", "pair", "batch", "committed_upto"),
          ("stamps", "records", "removed", "ne_flows", "ne_next")),
    _Spec(b"S", Sync, ("epoch", "pair", "batch"), ("records", "ne_flows", "ne_next", "stamps"), True),
    _Spec(b"C", Commit, ("epoch", "pair", "upto"), ()),
    _Spec(b"K", Packets, ("epoch", "pair", "batch"), ("stamps",), True),
    _Spec(b"V", Vote, ("epoch", "pair", "batch", "committed"), ()),
    _Spec(b"N", NeedFrom, ("epoch", "pair", "batch"), ()),
    _Spec(b"M", Missing, ("epoch", "pair", "batch"), ("stamps",)),
)
_BY_KIND = {s.kind: s for s in _SPECS}
_BY_TYPE = {s.cls: s for s in _SPECS}
KINDS = {s.kind: s.cls.__name__ for s in _SPECS}
_DELTA_FIELDS = ("records", "removed", "ne_flows", "ne_next")


class Codec:
    """Encoder/decoder for one NF's replication messages.

    ``records_dtype`` is the NF's ``FlowTable.export_dtype()`` (fields
    flow_id and state). Both sides of a pair run the same NF, so they build
    the same Codec; the dtype itself never travels.
    """

    def __init__(self, records_dtype: np.dtype) -> None:
        dt = np.dtype(records_dtype)
        if dt.names is None or "flow_id" not in dt.names or dt.itemsize == 0:
            raise ProtocolMisuse(f"Codec: records dtype must be structured with a flow_id field, got {dt}")
        self.records_dtype = dt
        self._dtypes = {"stamps": STAMP_DTYPE, "records": dt, "removed": U8, "ne_flows": U8, "ne_next": U8}

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, msg: Message) -> list[Any]:
        """Frames of ``msg``: bytes for kind and header, zero-copy memoryviews for arrays."""
        spec = _BY_TYPE.get(type(msg))
        if spec is None:
            raise ProtocolMisuse(f"encode: not a replication message: {type(msg).__name__}")
        header: dict[str, Any] = {name: getattr(msg, name) for name in spec.scalars}
        frames: list[Any] = []
        for name in spec.arrays:
            arr = self._wire_array(spec, name, _array_field(msg, name))
            header[name] = len(arr)
            # A byte view: pyzmq sends any contiguous buffer, and uint8 avoids
            # PEP 3118 format strings for nested structured dtypes.
            frames.append(memoryview(arr.view(np.uint8)))
        if spec.payloads:
            header["payloads"] = None if msg.payloads is None else len(msg.payloads)
            if msg.payloads is not None:
                frames.extend(_encode_payloads(msg.payloads))
        return [spec.kind, orjson.dumps(header), *frames]

    def _wire_array(self, spec: _Spec, name: str, arr: Any) -> np.ndarray:
        want = self._dtypes[name]
        if not (isinstance(arr, np.ndarray) and arr.ndim == 1 and arr.dtype == want):
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ProtocolMisuse(f"encode {spec.cls.__name__}: {name} must be a 1-D {want} array, got {got}")
        return np.ascontiguousarray(arr)   # a copy only for a strided view

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, frames: list[Any]) -> Message:
        """The message in ``frames``; WireError naming the problem for anything malformed."""
        views = _views(frames)
        spec, header = _head(views)
        what = spec.cls.__name__
        n_payloads = _payload_count(what, header) if spec.payloads else None
        _check_keys(what, header, spec)
        expected = 2 + len(spec.arrays) + (0 if n_payloads is None else 2)
        if len(views) != expected:
            raise WireError(f"{what}: {len(views)} frames, expected {expected}")
        fields = {name: _count(what, header, name, MAX_ID) for name in spec.scalars}
        arrays = {name: self._array(what, name, header, views[2 + i]) for i, name in enumerate(spec.arrays)}
        if spec.payloads:
            fields["payloads"] = None if n_payloads is None else _decode_payloads(what, n_payloads, views[-2:])
        if spec.cls is Prepare:
            fields["delta"] = Delta(**{name: arrays.pop(name) for name in _DELTA_FIELDS})
        msg = spec.cls(**fields, **arrays)
        reason = check_message(msg, self.records_dtype)
        if reason is not None:
            raise WireError(f"{what}: {reason}")
        return msg

    def _array(self, what: str, name: str, header: dict, view: memoryview) -> np.ndarray:
        n = _count(what, header, name, MAX_ITEMS)
        dtype = self._dtypes[name]
        size = view.nbytes
        if size % dtype.itemsize:
            raise WireError(f"{what}: {name} frame of {size} bytes is not a whole number of "
                            f"{dtype.itemsize}-byte items")
        if size // dtype.itemsize != n:
            raise WireError(f"{what}: {name} frame holds {size // dtype.itemsize} items, header says {n}")
        return np.frombuffer(view, dtype=dtype)


def peek_pair(frames: list[Any]) -> int:
    """The ``pair`` of a message, checking only kind and header: for routing before a full decode."""
    views = _views(frames)
    spec, header = _head(views)
    return _count(spec.cls.__name__, header, "pair", MAX_ID)


# -- helpers (module level: they need no dtype) ---------------------------------------------------


def _array_field(msg: Any, name: str) -> Any:
    return getattr(msg.delta, name) if isinstance(msg, Prepare) and name in _DELTA_FIELDS else getattr(msg, name)


def _views(frames: Any) -> list[memoryview]:
    if not isinstance(frames, list | tuple):
        raise WireError(f"frames must be a list, got {type(frames).__name__}")
    views = []
    for i, frame in enumerate(frames):
        try:
            view = memoryview(frame)
        except TypeError:
            raise WireError(f"frame {i} is not a buffer") from None
        if not view.c_contiguous:
            raise WireError(f"frame {i} is not contiguous")
        views.append(view.cast("B") if view.ndim != 1 or view.format != "B" else view)
    return views


def _head(views: list[memoryview]) -> tuple[_Spec, dict]:
    if len(views) < 2:
        raise WireError(f"{len(views)} frames: a replication message has at least kind and header")
    kind = bytes(views[0][:8])
    spec = _BY_KIND.get(kind)
    if spec is None:
        raise WireError(f"unknown kind {kind!r}")
    try:
        header = orjson.loads(views[1])
    except orjson.JSONDecodeError:
        raise WireError(f"{spec.cls.__name__}: header is not JSON") from None
    if not isinstance(header, dict):
        raise WireError(f"{spec.cls.__name__}: header is not an object")
    return spec, header


def _check_keys(what: str, header: dict, spec: _Spec) -> None:
    expected = {*spec.scalars, *spec.arrays, *(("payloads",) if spec.payloads else ())}
    missing = expected - header.keys()
    if missing:
        raise WireError(f"{what}: missing {min(missing)!r}")
    extra = header.keys() - expected
    if extra:
        raise WireError(f"{what}: unexpected field {min(extra)!r}")


def _count(what: str, header: dict, name: str, maximum: int) -> int:
    if name not in header:
        raise WireError(f"{what}: missing {name!r}")
    value = header[name]
    if type(value) is not int:   # bool is an int subclass: refuse it too
        raise WireError(f"{what}: {name!r} is not an integer")
    if not 0 <= value <= maximum:
        raise WireError(f"{what}: {name!r} = {value} is out of range [0, {maximum}]")
    return value


def _payload_count(what: str, header: dict) -> int | None:
    if header.get("payloads", 0) is None:
        return None
    return _count(what, header, "payloads", MAX_ITEMS)


def _encode_payloads(payloads: Any) -> list[Any]:
    try:
        views = [memoryview(p) for p in payloads]
    except TypeError:
        raise ProtocolMisuse("encode: payloads must be bytes-like to go on the wire") from None
    lengths = np.array([v.nbytes for v in views], dtype=U8)
    # One frame per payload would make the frame count depend on the data; a
    # blob plus lengths keeps it fixed. Payloads are small packets: join copies.
    return [memoryview(lengths.view(np.uint8)), b"".join(views)]


def _decode_payloads(what: str, n: int, frames: list[memoryview]) -> tuple[bytes, ...]:
    lengths_frame, blob = frames
    if lengths_frame.nbytes != n * U8.itemsize:
        raise WireError(f"{what}: payload lengths frame of {lengths_frame.nbytes} bytes, header says {n} payloads")
    lengths = np.frombuffer(lengths_frame, dtype=U8)
    # Bound every length before summing, so a hostile u64 cannot overflow the sum.
    if n and int(lengths.max()) > blob.nbytes:
        raise WireError(f"{what}: a payload length exceeds the payload frame")
    ends = np.cumsum(lengths, dtype=U8).tolist()
    if (ends[-1] if n else 0) != blob.nbytes:
        raise WireError(f"{what}: payload lengths do not add up to the payload frame")
    starts = [0, *ends[:-1]]
    return tuple(bytes(blob[a:b]) for a, b in zip(starts, ends))
