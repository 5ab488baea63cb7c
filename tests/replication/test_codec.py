"""The replication wire codec: exact round trips, zero copy, and WireError (only) for garbage."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from deft.runtime.errors import WireError
from deft.runtime.replication import (
    STAMP_DTYPE,
    Commit,
    Delta,
    Missing,
    NeedFrom,
    Packets,
    Prepare,
    ProtocolMisuse,
    Sync,
    Vote,
    check_message,
    make_stamps,
)
from deft.runtime.replication.codec import KINDS, MAX_ID, MAX_ITEMS, Codec, peek_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import EPOCH, EXPORT, PAIR, prepare, stamps

CODEC = Codec(EXPORT)
U64 = st.integers(0, 2**64 - 1)
IDS = st.integers(0, MAX_ID)
BATCHES = st.integers(1, MAX_ID)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies -----------------------------------------------------------------------------------


@st.composite
def stamp_arrays(draw, max_size: int = 12) -> np.ndarray:
    pairs = draw(st.lists(st.tuples(U64, st.integers(1, 2**64 - 1)), unique=True, max_size=max_size))
    return make_stamps([f for f, _ in pairs], [s for _, s in pairs])


@st.composite
def records(draw) -> np.ndarray:
    n = draw(st.integers(0, 5))
    raw = draw(st.binary(min_size=n * EXPORT.itemsize, max_size=n * EXPORT.itemsize))
    return np.frombuffer(raw, dtype=EXPORT).copy()


def u8(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


@st.composite
def next_expected(draw) -> tuple[np.ndarray, np.ndarray]:
    pairs = draw(st.lists(st.tuples(U64, st.integers(1, 2**64 - 1)), max_size=6))
    return u8([f for f, _ in pairs]), u8([n for _, n in pairs])


@st.composite
def payloads_for(draw, n: int) -> tuple | None:
    if draw(st.booleans()):
        return None
    return tuple(draw(st.lists(st.binary(max_size=20), min_size=n, max_size=n)))


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(list(KINDS.values())))
    epoch, pair, batch = draw(IDS), draw(IDS), draw(BATCHES)
    if kind == "Commit":
        return Commit(epoch, pair, draw(IDS))
    if kind == "Vote":
        return Vote(epoch, pair, batch, draw(st.integers(0, batch)))
    if kind == "NeedFrom":
        return NeedFrom(epoch, pair, batch)
    s = draw(stamp_arrays())
    if kind == "Missing":
        return Missing(epoch, pair, batch, s)
    if kind == "Packets":
        return Packets(epoch, pair, batch, s, draw(payloads_for(len(s))))
    flows, nxt = draw(next_expected())
    if kind == "Sync":
        return Sync(epoch, pair, batch, draw(records()), flows, nxt, s, draw(payloads_for(len(s))))
    removed = u8(draw(st.lists(U64, max_size=5)))
    return Prepare(epoch, pair, batch, s, Delta(draw(records()), removed, flows, nxt),
                   draw(st.integers(0, batch - 1)))


def fields(msg) -> dict:
    """Every field, arrays as (dtype, bytes): messages holding arrays compare by identity."""
    out = {}
    for name in type(msg).__slots__:
        value = getattr(msg, name)
        if isinstance(value, Delta):
            value = fields(value)
        elif isinstance(value, np.ndarray):
            value = (value.dtype, value.shape, value.tobytes())
        out[name] = value
    return out


def assert_decodes_or_wire_error(frames: list) -> None:
    try:
        msg = CODEC.decode(frames)
    except WireError:
        return
    assert check_message(msg, EXPORT) is None


# -- round trips ----------------------------------------------------------------------------------


@FAST
@given(messages())
def test_random_messages_round_trip_exactly(msg):
    assert check_message(msg, EXPORT) is None   # the strategy makes valid messages only
    frames = CODEC.encode(msg)
    back = CODEC.decode(frames)
    assert type(back) is type(msg)
    assert fields(back) == fields(msg)
    # and again from plain bytes, as a copying socket would deliver them
    assert fields(CODEC.decode([bytes(f) for f in frames])) == fields(msg)


def test_frame_layout_of_a_prepare():
    msg = prepare(5, [(1, 1), (2, 1), (1, 2)], committed_upto=4)
    kind, header, *arrays = CODEC.encode(msg)
    assert kind == b"P"
    assert orjson.loads(header) == {"epoch": EPOCH, "pair": PAIR, "batch": 5, "committed_upto": 4,
                                    "stamps": 3, "records": 2, "removed": 0, "ne_flows": 2, "ne_next": 2}
    assert [memoryview(a).nbytes for a in arrays] == [3 * 16, 2 * EXPORT.itemsize, 0, 16, 16]


def test_payloads_travel_as_lengths_and_one_blob():
    msg = Packets(EPOCH, PAIR, 2, stamps((1, 1), (1, 2), (3, 1)), (b"ab", b"", b"cde"))
    kind, header, s, lengths, blob = CODEC.encode(msg)
    assert orjson.loads(header)["payloads"] == 3
    assert np.frombuffer(lengths, dtype="<u8").tolist() == [2, 0, 3] and bytes(blob) == b"abcde"
    assert CODEC.decode([kind, header, s, lengths, blob]).payloads == (b"ab", b"", b"cde")
    none = CODEC.encode(Packets(EPOCH, PAIR, 2, stamps((1, 1))))
    assert len(none) == 3 and CODEC.decode(none).payloads is None


def test_arrays_are_not_copied():
    msg = prepare(1, [(1, 1), (2, 1)])
    frames = CODEC.encode(msg)
    assert np.shares_memory(np.frombuffer(frames[2], dtype=np.uint8), msg.stamps)
    assert np.shares_memory(np.frombuffer(frames[3], dtype=np.uint8), msg.delta.records)
    received = [bytearray(f) for f in frames]
    back = CODEC.decode(received)
    assert np.shares_memory(back.stamps, np.frombuffer(received[2], dtype=np.uint8))
    assert not back.stamps.flags.writeable or back.stamps.base is not None


def test_peek_pair_reads_only_the_header():
    frames = CODEC.encode(Vote(EPOCH, 42, 3, 1))
    assert peek_pair(frames) == 42
    with pytest.raises(WireError):
        peek_pair([b"V", b'{"pair": -1}'])


def test_encode_refuses_what_cannot_go_on_the_wire():
    bad = Prepare(EPOCH, PAIR, 1, stamps((1, 1)), Delta(np.zeros(1, dtype=[("flow_id", "<u8")]),
                                                        u8([]), u8([1]), u8([2])))
    with pytest.raises(ProtocolMisuse, match="records"):
        CODEC.encode(bad)
    with pytest.raises(ProtocolMisuse, match="bytes-like"):
        CODEC.encode(Packets(EPOCH, PAIR, 1, stamps((1, 1)), ("a string",)))
    with pytest.raises(ProtocolMisuse):
        CODEC.encode("not a message")
    with pytest.raises(ProtocolMisuse):
        Codec(np.dtype("<u8"))


# -- refusal of garbage, each reason named ---------------------------------------------------------


def valid(msg=None) -> list:
    return [bytes(f) for f in CODEC.encode(msg or prepare(3, [(1, 1), (2, 1)], committed_upto=2))]


def with_header(frames: list, **changes) -> list:
    header = orjson.loads(frames[1])
    for name, value in changes.items():
        if value is ...:
            del header[name]
        else:
            header[name] = value
    return [frames[0], orjson.dumps(header), *frames[2:]]


@pytest.mark.parametrize(("frames", "match"), [
    ([], "at least kind and header"),
    ([b"P"], "at least kind and header"),
    ([b"Z", b"{}"], "unknown kind"),
    ([b"PP", b"{}"], "unknown kind"),
    ([b"", b"{}"], "unknown kind"),
    ([b"V", b"{not json"], "not JSON"),
    ([b"V", b"[1, 2]"], "not an object"),
    ([b"V", b'{"epoch": 1, "pair": 2, "batch": 3}'], "missing 'committed'"),
    ([b"V", b'{"epoch": 1, "pair": 2, "batch": 3, "committed": 0, "x": 1}'], "unexpected field 'x'"),
    ([b"V", b'{"epoch": true, "pair": 2, "batch": 3, "committed": 0}'], "'epoch' is not an integer"),
    ([b"V", b'{"epoch": 1.0, "pair": 2, "batch": 3, "committed": 0}'], "'epoch' is not an integer"),
    ([b"V", b'{"epoch": "1", "pair": 2, "batch": 3, "committed": 0}'], "'epoch' is not an integer"),
    ([b"V", b'{"epoch": -1, "pair": 2, "batch": 3, "committed": 0}'], "out of range"),
    ([b"V", b'{"epoch": 18446744073709551615, "pair": 2, "batch": 3, "committed": 0}'], "out of range"),
    ([b"V", b'{"epoch": 1, "pair": 2, "batch": 3, "committed": 4}'], "bad commit point in vote"),
    ([b"V", b'{"epoch": 1, "pair": 2, "batch": 0, "committed": 0}'], "batch ids start at 1"),
    ([b"V", b'{"epoch": 1, "pair": 2, "batch": 1, "committed": 0}', b"extra"], "3 frames, expected 2"),
])
def test_garbage_is_a_wire_error_naming_the_problem(frames, match):
    with pytest.raises(WireError, match=match):
        CODEC.decode(frames)


def test_array_frames_are_checked_against_item_size_and_declared_length():
    frames = valid()
    with pytest.raises(WireError, match="stamps frame of 31 bytes is not a whole number of 16-byte items"):
        CODEC.decode([*frames[:2], frames[2][:-1], *frames[3:]])
    with pytest.raises(WireError, match="stamps frame holds 1 items, header says 2"):
        CODEC.decode([*frames[:2], frames[2][:16], *frames[3:]])
    with pytest.raises(WireError, match="'records' = 16777217 is out of range"):
        CODEC.decode(with_header(frames, records=MAX_ITEMS + 1))
    with pytest.raises(WireError, match="missing 'removed'"):
        CODEC.decode(with_header(frames, removed=...))
    with pytest.raises(WireError, match="6 frames, expected 7"):
        CODEC.decode(frames[:-1])


def test_check_message_reasons_become_wire_errors():
    seq0 = Missing(EPOCH, PAIR, 1, stamps((1, 0)))
    with pytest.raises(WireError, match="Missing: stamp with seq 0"):
        CODEC.decode(CODEC.encode(seq0))
    twice = Missing(EPOCH, PAIR, 1, stamps((1, 1), (1, 1)))
    with pytest.raises(WireError, match="repeated stamp"):
        CODEC.decode(CODEC.encode(twice))
    late = valid(prepare(3, [(1, 1)], committed_upto=2))
    with pytest.raises(WireError, match="bad committed_upto"):
        CODEC.decode(with_header(late, committed_upto=3))


def test_payload_frames_are_checked():
    frames = valid(Packets(EPOCH, PAIR, 2, stamps((1, 1), (1, 2)), (b"ab", b"c")))
    kind, header, s, lengths, blob = frames
    with pytest.raises(WireError, match="do not add up"):
        CODEC.decode([kind, header, s, lengths, blob + b"x"])
    huge = u8([2**64 - 1, 1]).tobytes()
    with pytest.raises(WireError, match="exceeds the payload frame"):
        CODEC.decode([kind, header, s, huge, blob])
    with pytest.raises(WireError, match="payload lengths frame of 8 bytes"):
        CODEC.decode([kind, header, s, lengths[:8], blob])
    with pytest.raises(WireError, match="payloads do not match stamps"):
        CODEC.decode([kind, with_header(frames, payloads=1)[1], s, lengths[:8], b"ab"])
    with pytest.raises(WireError, match="expected 3"):
        CODEC.decode(with_header(frames, payloads=None))
    with pytest.raises(WireError, match="'payloads' is not an integer"):
        CODEC.decode(with_header(frames, payloads="2"))


def test_records_of_another_width_are_refused():
    other = Codec(np.dtype([("flow_id", "<u8"), ("state", [("x", "<u2")])]))
    frames = other.encode(Sync(EPOCH, PAIR, 1, np.zeros(3, other.records_dtype), u8([]), u8([]),
                               stamps()))
    with pytest.raises(WireError, match="records frame"):
        CODEC.decode(frames)


# -- properties: random bytes and mutations never raise anything but WireError ----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@FAST
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_raise_anything_but_wire_error(frames):
    assert_decodes_or_wire_error(frames)


@FAST
@given(st.sampled_from(list(KINDS)), st.dictionaries(st.sampled_from(
    ["epoch", "pair", "batch", "upto", "committed", "committed_upto", "stamps", "records", "removed",
     "ne_flows", "ne_next", "payloads", "x"]), json_values), st.lists(st.binary(max_size=80), max_size=7))
def test_random_headers_never_raise_anything_but_wire_error(kind, header, arrays):
    assert_decodes_or_wire_error([kind, orjson.dumps(header), *arrays])


@st.composite
def mutated(draw) -> list:
    frames = [bytes(f) for f in CODEC.encode(draw(messages()))]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "dup", "truncate", "flip", "append", "replace", "header", "kind"]))
        i = draw(st.integers(0, max(len(frames) - 1, 0)))
        if not frames and op != "append":
            continue
        if op == "drop":
            del frames[i]
        elif op == "dup":
            frames.insert(i, frames[i])
        elif op == "truncate":
            frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
        elif op == "flip" and frames[i]:
            j = draw(st.integers(0, len(frames[i]) - 1))
            frames[i] = frames[i][:j] + bytes([frames[i][j] ^ draw(st.integers(1, 255))]) + frames[i][j + 1:]
        elif op == "append":
            frames.append(draw(st.binary(max_size=40)))
        elif op == "replace":
            frames[i] = draw(st.binary(max_size=40))
        elif op == "kind":
            frames[0] = draw(st.sampled_from(list(KINDS)))
        elif op == "header" and len(frames) > 1:
            try:
                header = orjson.loads(frames[1])
            except orjson.JSONDecodeError:
                continue
            if isinstance(header, dict) and header:
                key = draw(st.sampled_from(sorted(header)))
                if draw(st.booleans()):
                    header[key] = draw(json_values)
                else:
                    del header[key]
                frames[1] = orjson.dumps(header)
    return frames


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_frames_decode_to_a_valid_message_or_a_wire_error(frames):
    assert_decodes_or_wire_error(frames)


def test_non_buffer_frames_are_wire_errors():
    with pytest.raises(WireError, match="not a buffer"):
        CODEC.decode([b"V", 7])
    with pytest.raises(WireError, match="must be a list"):
        CODEC.decode(b"V")


def test_stamp_dtype_on_the_wire_is_little_endian_u8_pairs():
    assert STAMP_DTYPE.itemsize == 16 and STAMP_DTYPE["seq"].str == "<u8"
