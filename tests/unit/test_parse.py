"""Ingress parser: every malformed case is dropped and counted by reason; random bytes never crash it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.dataplane.frames import build_frame, ethernet_frame, ipv4_header, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PACKET_DTYPE
from deft.runtime.dataplane.parse import DROP_REASONS, drops_dict, parse_records_into, records_from_datagrams

A, B = 0x0A000001, 0xC6336401


def parse_one(datagram: bytes):
    recs, drops = records_from_datagrams([datagram])
    return recs, {k: v for k, v in drops_dict(drops).items() if v}


def good_udp(payload=b"x" * 20) -> bytes:
    return build_frame(A, B, IPPROTO_UDP, 1234, 53, payload)


def with_ip_byte(frame: bytes, offset: int, value: int) -> bytes:
    b = bytearray(frame)
    b[14 + offset] = value
    return bytes(b)


def with_l4_byte(frame: bytes, offset: int, value: int) -> bytes:
    b = bytearray(frame)
    b[34 + offset] = value
    return bytes(b)


def with_l4_u16(frame: bytes, offset: int, value: int) -> bytes:
    b = bytearray(frame)
    struct.pack_into("!H", b, 34 + offset, value)
    return bytes(b)


def test_udp_tcp_icmp_fields():
    frames = [
        build_frame(A, B, IPPROTO_UDP, 1234, 53, b"q"),
        build_frame(B, A, IPPROTO_TCP, 80, 40000, b"", tcp_flags=0x12),
        build_frame(A, B, IPPROTO_ICMP, 7, 1, b"ping"),
    ]
    recs, drops = records_from_datagrams([vxlan_wrap(f, 4242) for f in frames], ts_ns=99)
    assert not drops.any()
    assert recs["vni"].tolist() == [4242] * 3
    assert recs["proto"].tolist() == [17, 6, 1]
    assert recs["src_port"].tolist() == [1234, 80, 0]
    assert recs["dst_port"].tolist() == [53, 40000, 0]
    assert recs["tcp_flags"].tolist() == [0, 0x12, 0]
    assert recs["l4_off"].tolist() == [34, 34, 34]
    assert recs["frame_len"].tolist() == [len(f) for f in frames]
    assert recs["ts_ns"].tolist() == [99] * 3
    assert bytes(recs["frame"][0, : len(frames[0])]) == frames[0]


def test_both_directions_share_hash_and_differ_in_direction():
    fwd = build_frame(A, B, IPPROTO_TCP, 40000, 80, b"", tcp_flags=0x02)
    rev = build_frame(B, A, IPPROTO_TCP, 80, 40000, b"", tcp_flags=0x12)
    recs, _ = records_from_datagrams([vxlan_wrap(fwd, 1), vxlan_wrap(rev, 1)])
    assert recs["key_hash"][0] == recs["key_hash"][1]
    assert sorted(recs["direction"].tolist()) == [0, 1]


def test_ethernet_padding_is_stripped():
    frame = good_udp(b"")
    padded = frame + b"\x00" * (60 - len(frame))
    recs, drops = parse_one(vxlan_wrap(padded, 1))
    assert recs["frame_len"][0] == len(frame)


MALFORMED = {
    "short_datagram": b"\x08\x00\x00",
    "vxlan_flag": b"\x00" * 8 + good_udp(),
    "oversize": vxlan_wrap(build_frame(A, B, IPPROTO_UDP, 1, 2, b"z" * 1600), 1),
    "short_frame": vxlan_wrap(b"\x02" * 10, 1),
    "not_ipv4": vxlan_wrap(ethernet_frame(b"\x60" + b"\x00" * 39, ethertype=0x86DD), 1),
    "truncated_ip": vxlan_wrap(good_udp()[:30], 1),
    "bad_version": vxlan_wrap(with_ip_byte(good_udp(), 0, 0x65), 1),
    "bad_ihl": vxlan_wrap(with_ip_byte(good_udp(), 0, 0x43), 1),
    "fragment": vxlan_wrap(ethernet_frame(ipv4_header(A, B, IPPROTO_UDP, 28, flags_frag=0x2000) + b"u" * 28), 1),
    "unsupported_proto": vxlan_wrap(ethernet_frame(ipv4_header(A, B, 47, 8) + b"g" * 8), 1),
    "truncated_l4": vxlan_wrap(ethernet_frame(ipv4_header(A, B, IPPROTO_TCP, 12) + b"t" * 12), 1),
    "bad_udp_length": vxlan_wrap(with_l4_u16(good_udp(), 4, 7), 1),
    "bad_tcp_offset": vxlan_wrap(with_l4_byte(build_frame(A, B, IPPROTO_TCP, 1, 2, b"abcd"), 12, 0x40), 1),
    "bad_icmp_type": vxlan_wrap(with_l4_byte(build_frame(A, B, IPPROTO_ICMP, 7, 1, b"ping"), 0, 19), 1),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_input_is_dropped_by_reason(reason):
    recs, drops = parse_one(MALFORMED[reason])
    assert len(recs) == 0
    assert drops == {reason: 1}


def test_every_reason_has_a_case():
    assert set(MALFORMED) == set(DROP_REASONS)


def test_fragment_offset_alone_is_a_fragment():
    frag = ethernet_frame(ipv4_header(A, B, IPPROTO_UDP, 28, flags_frag=0x0010) + b"u" * 28)
    assert parse_one(vxlan_wrap(frag, 1))[1] == {"fragment": 1}


def test_tcp_data_offset_beyond_segment_is_truncated_l4():
    seg = bytearray(build_frame(A, B, IPPROTO_TCP, 1, 2, b"")[34:])
    seg[12] = 0xF0  # data offset 60 bytes in a 20-byte segment
    frame = ethernet_frame(ipv4_header(A, B, IPPROTO_TCP, len(seg)) + bytes(seg))
    assert parse_one(vxlan_wrap(frame, 1))[1] == {"truncated_l4": 1}


@pytest.mark.parametrize("ulen, verdict", [(0, "bad_udp_length"), (7, "bad_udp_length"), (8, None), (27, None),
                                           (28, None), (29, "bad_udp_length"), (65535, "bad_udp_length")])
def test_udp_length_field_is_checked_against_the_ip_payload(ulen, verdict):
    frame = good_udp(b"x" * 20)  # UDP header + 20 bytes: the IP payload is 28
    burst = [vxlan_wrap(with_l4_u16(frame, 4, ulen), 1)]
    for datagrams in (burst, burst * 12):   # the small-burst path and the vectorised one
        recs, drops = records_from_datagrams(datagrams)
        got = {k: v for k, v in drops_dict(drops).items() if v}
        assert got == ({verdict: len(datagrams)} if verdict else {})
        assert len(recs) == (0 if verdict else len(datagrams))


def test_udp_shorter_than_its_ip_payload_passes_with_its_padding():
    frame = with_l4_u16(good_udp(b"x" * 20), 4, 12)   # 4 bytes of data, 16 of trailing padding
    recs, drops = parse_one(vxlan_wrap(frame, 1))
    assert drops == {} and bytes(recs["frame"][0, : len(frame)]) == frame


def test_good_packets_survive_among_garbage():
    good = [vxlan_wrap(build_frame(A, B + i, IPPROTO_UDP, 1000 + i, 53, b"g"), i) for i in range(5)]
    mixed = [good[0], MALFORMED["fragment"], good[1], b"", good[2], MALFORMED["vxlan_flag"], good[3], good[4]]
    recs, drops = records_from_datagrams(mixed)
    assert recs["vni"].tolist() == [0, 1, 2, 3, 4]
    assert int(drops.sum()) == 3


def test_shm_records_parse_like_datagrams():
    frame = good_udp()
    rec = np.zeros(1, dtype=PACKET_DTYPE)
    rec["frame"][0, : len(frame)] = np.frombuffer(frame, np.uint8)
    rec["frame_len"] = len(frame)
    rec["vni"] = 77
    out = np.zeros(1, dtype=PACKET_DTYPE)
    drops = np.zeros(len(DROP_REASONS), np.int64)
    assert parse_records_into(rec, out, 5, drops) == 1
    assert out["vni"][0] == 77 and out["src_port"][0] == 1234


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=8))
def test_random_bytes_never_crash_and_are_all_accounted(datagrams):
    recs, drops = records_from_datagrams(datagrams)
    assert len(recs) + int(drops.sum()) == len(datagrams)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 60))
def test_random_mutation_of_a_good_packet_is_accounted(noise, where):
    d = bytearray(vxlan_wrap(good_udp(), 3))
    d[where: where + len(noise)] = noise
    recs, drops = records_from_datagrams([bytes(d)])
    assert len(recs) + int(drops.sum()) == 1
    if len(recs):
        assert_l4_sound(recs[0])


def assert_l4_sound(rec) -> None:
    """What every record handed to an NF satisfies, whatever the datagram was."""
    frame = bytes(rec["frame"][: rec["frame_len"]])
    assert rec["proto"] in (1, 6, 17)
    l4 = int(rec["l4_off"])
    assert 34 <= l4 <= 74
    total = struct.unpack_from("!H", frame, 16)[0]
    assert rec["frame_len"] == 14 + total
    l4_len = 14 + total - l4
    if rec["proto"] == IPPROTO_UDP:
        assert 8 <= struct.unpack_from("!H", frame, l4 + 4)[0] <= l4_len
    elif rec["proto"] == IPPROTO_TCP:
        assert 20 <= (frame[l4 + 12] >> 4) * 4 <= l4_len
    else:
        assert l4_len >= 8 and frame[l4] <= 18


l4_fields = st.tuples(
    st.sampled_from([IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP]), st.binary(max_size=40),
    st.lists(st.tuples(st.integers(0, 19), st.integers(0, 255)), max_size=4),   # random L4 header bytes
    st.sampled_from([5, 6, 15]), st.integers(-30, 30),                           # IHL, IP total length change
)


@settings(max_examples=400, deadline=None)
@given(st.lists(l4_fields, min_size=1, max_size=12))
def test_random_l4_header_fields_never_reach_an_nf_unsound(packets):
    datagrams = []
    for proto, payload, pokes, ihl, dlen in packets:
        frame = bytearray(build_frame(A, B, proto, 1000, 2000, payload))
        if ihl > 5:  # IP options: the L4 header moves
            opts = bytes((ihl - 5) * 4)
            frame = bytearray(frame[:34] + opts + frame[34:])
            frame[14] = 0x40 | ihl
            struct.pack_into("!H", frame, 16, struct.unpack_from("!H", frame, 16)[0] + len(opts))
        for at, value in pokes:
            if 14 + ihl * 4 + at < len(frame):
                frame[14 + ihl * 4 + at] = value
        total = struct.unpack_from("!H", frame, 16)[0]
        struct.pack_into("!H", frame, 16, max(0, min(65535, total + dlen)))
        datagrams.append(vxlan_wrap(bytes(frame), 1))
    recs, drops = records_from_datagrams(datagrams)       # small bursts take the plain-Python path
    assert len(recs) + int(drops.sum()) == len(datagrams)
    for rec in recs:
        assert_l4_sound(rec)
    want, _ = _vectorised(datagrams)
    assert len(want) == len(recs)
    for rec in want:
        assert_l4_sound(rec)


def _vectorised(datagrams: list[bytes]):
    """The numpy path alone (the small-burst path bypassed), for comparison."""
    from deft.runtime.dataplane import parse as P

    n = len(datagrams)
    stage = np.zeros((n, P.STAGE_WIDTH), dtype=np.uint8)
    for i, d in enumerate(datagrams):
        stage[i, : len(d)] = np.frombuffer(d, np.uint8)
    lengths = np.array([len(d) for d in datagrams], dtype=np.int64)
    vni = (stage[:, 4].astype(np.uint32) << 16) | (stage[:, 5].astype(np.uint32) << 8) | stage[:, 6]
    out = np.zeros(n, dtype=PACKET_DTYPE)
    drops = np.zeros(len(DROP_REASONS), np.int64)
    k = P._parse_block(stage, lengths - 8, 8, True, vni, out, 7, drops)
    return out[:k], drops


packet_fields = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from([IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP]),
    st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=64), st.integers(0, 255),
    st.integers(0, 2**24 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(packet_fields, min_size=1, max_size=8), st.lists(st.tuples(st.integers(0, 80), st.binary(max_size=3)),
                                                                  max_size=2))
def test_small_burst_path_writes_the_same_records_as_the_numpy_path(packets, mutations):
    from deft.runtime.dataplane.parse_small import parse_small

    datagrams = [vxlan_wrap(build_frame(s, d, p, sp, dp, pay, tcp_flags=fl), vni)
                 for s, d, p, sp, dp, pay, fl, vni in packets]
    for where, noise in mutations:  # damage the first datagram: then the small path must step aside
        d = bytearray(datagrams[0])
        d[where: where + len(noise)] = noise
        datagrams[0] = bytes(d)
    want, drops = _vectorised(datagrams)
    stage = np.zeros((len(datagrams), 2048), dtype=np.uint8)
    for i, d in enumerate(datagrams):
        stage[i, : len(d)] = np.frombuffer(d, np.uint8)
    out = np.zeros(len(datagrams), dtype=PACKET_DTYPE)
    k = parse_small(stage, [len(d) for d in datagrams], out, 7)
    if k is None:
        return  # not the clean common case: the numpy path handles it (and classifies the drops)
    assert not drops.any() and k == len(want)
    for got, exp in zip(out[:k], want):
        n = 64 + int(exp["frame_len"])
        assert got.tobytes()[:n] == exp.tobytes()[:n]
