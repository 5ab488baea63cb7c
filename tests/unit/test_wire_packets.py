"""PACKETS and COPIES messages (deft.runtime.wire): a round trip, the checks, and the few-records path
(slices and Python checks) against the column path on the same frames, garbage included."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from deft.runtime import wire
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_TCP, IPPROTO_UDP, PACKET_DTYPE
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import WireError
from hypothesis import given, settings
from hypothesis import strategies as st


def stamped(n: int, payload: int = 20) -> np.ndarray:
    grams = [vxlan_wrap(build_frame(0x0A000001 + i, 0x0A000099, IPPROTO_TCP if i % 2 else IPPROTO_UDP,
                                    1000 + i, 80, b"x" * (payload + 7 * i)), 7) for i in range(n)]
    recs, drops = records_from_datagrams(grams)
    assert not drops.any()
    recs["flow_id"] = np.arange(1, n + 1)
    recs["seq"] = 1
    clean = np.zeros(n, dtype=PACKET_DTYPE)   # zeroed padding: the decoders' comparison is byte for byte
    for name in PACKET_DTYPE.names:
        clean[name] = recs[name]
    return clean


def decode_both(frames):
    """(result or the error's text) of the few-records path and of the column path."""
    outs = []
    for few in (wire.FEW, 0):
        saved, wire.FEW = wire.FEW, few
        out = np.zeros(16, dtype=PACKET_DTYPE)
        try:
            header, n = wire.decode_packets(frames, 4, out)
            outs.append((header, out[:n].tobytes()))
        except WireError as exc:
            outs.append(str(exc))
        finally:
            wire.FEW = saved
    return outs


@pytest.mark.parametrize("n", [1, 2, 4, 5, 9])
@pytest.mark.parametrize("kind", [wire.PACKETS, wire.COPIES])
def test_records_round_trip_through_either_path(n, kind):
    recs = stamped(n)
    recs["dup"] = kind == wire.COPIES
    frames = [bytes(f) for f in wire.encode_packets(3, 1, recs, None, kind)]
    few, columns = decode_both(frames)
    assert few == columns
    header, raw = few
    assert header == {"epoch": 3, "instance": 1, "n": n, "width": header["width"]}
    got = np.frombuffer(raw, dtype=PACKET_DTYPE)
    width = header["width"]
    assert got.view(np.uint8).reshape(n, -1)[:, :width].tobytes() == \
        recs.view(np.uint8).reshape(n, -1)[:, :width].tobytes()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.sampled_from([wire.PACKETS, wire.COPIES]), st.data())
def test_both_paths_accept_and_refuse_the_same_messages(n, kind, data):
    recs = stamped(n)
    recs["dup"] = kind == wire.COPIES
    frames = [bytes(f) for f in wire.encode_packets(3, 1, recs, None, kind)]
    raw = bytearray(frames[2])
    width = len(raw) // n
    for _ in range(data.draw(st.integers(0, 3))):   # damage: a byte of some record's header
        at = data.draw(st.integers(0, n - 1)) * width + data.draw(st.sampled_from([0, 44, 45, 52]))
        raw[at] = data.draw(st.integers(0, 255))
    frames[2] = bytes(raw)
    few, columns = decode_both(frames)
    assert few == columns


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.data())
def test_a_few_records_encode_as_the_column_path_encodes_them(n, data):
    recs = stamped(n, payload=data.draw(st.integers(0, 60)))
    index = data.draw(st.one_of(st.none(), st.lists(st.integers(0, n - 1), min_size=1, max_size=wire.FEW)))
    index = None if index is None else np.array(index, dtype=np.int64)
    recs.view(np.uint8).reshape(n, -1)[:, 53] = 0xAA   # padding as a gather may leave it: not zero
    encoded = []
    for few in (wire.FEW, 0):
        saved, wire.FEW = wire.FEW, few
        try:
            encoded.append([bytes(f) for f in wire.encode_packets(2, 0, recs, index, wire.PACKETS)])
        finally:
            wire.FEW = saved
    assert encoded[0] == encoded[1]
    kind, header, raw = encoded[0]
    width = orjson.loads(header)["width"]
    for i in range(len(raw) // width):   # nothing but the fields leaves the process
        for start, end in wire.HEADER_GAPS:
            assert raw[i * width + start: i * width + end] == bytes(end - start)


def test_a_payload_leaves_with_its_header_gaps_zeroed():
    recs = stamped(1)
    length = int(recs["frame_len"][0])
    recs.view(np.uint8)[: 40] = 0xAA       # stamp, time, hash, vni, addresses: garbage is fine here
    for start, end in wire.HEADER_GAPS:
        recs.view(np.uint8)[start:end] = 0xAA
    raw = wire.payload_bytes(recs[:1])
    assert len(raw) == wire.HEADER_SIZE + length
    assert raw[wire.HEADER_SIZE:] == recs[0].tobytes()[wire.HEADER_SIZE: wire.HEADER_SIZE + length]
    for start, end in wire.HEADER_GAPS:
        assert raw[start:end] == bytes(end - start)
    assert raw[:8] == b"\xaa" * 8   # the fields are as they were


def test_payloads_hold_the_header_and_the_frame_in_use_and_make_the_same_records_again():
    from deft.runtime.dataplane.packet import MAX_FRAME, record_payloads, records_from_payloads

    recs = stamped(6)
    recs["frame_len"] = [60, 128, 1, MAX_FRAME, 0, 300]
    recs["frame"][:, :] = np.arange(MAX_FRAME, dtype=np.uint16).astype(np.uint8)
    payloads = record_payloads(recs[::2])  # a strided view too
    assert [len(p) for p in payloads] == [wire.HEADER_SIZE + n for n in (60, 1, 0)]
    back, unusable = records_from_payloads(record_payloads(recs) + [recs[1].tobytes()])  # a whole record too
    assert unusable == 0 and len(back) == 7
    for k, (got, want) in enumerate(zip(back, [*recs, recs[1]])):
        n = int(want["frame_len"])
        assert got.tobytes()[: wire.HEADER_SIZE + n] == want.tobytes()[: wire.HEADER_SIZE + n]
        assert k == 6 or not got["frame"][n:].any()   # past the frame: zeros (the whole record: as it was)
    short = record_payloads(recs[1:2])[0][:-1]      # one byte less than its frame_len says
    _, unusable = records_from_payloads([b"", None, b"x" * 10, b"y" * 1601, short, *record_payloads(recs[:1])])
    assert unusable == 5
