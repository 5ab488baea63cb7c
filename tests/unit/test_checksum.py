"""deft.nfs.checksum: incremental checksums checked against full RFC 1071 sums written here with struct."""

from __future__ import annotations

import struct

import numpy as np
from deft.nfs import checksum as cs
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from deft.runtime.dataplane.parse import records_from_datagrams
from hypothesis import given, settings
from hypothesis import strategies as st

from .reference_checksums import csum as ref_csum
from .reference_checksums import ones_sum as ref_sum

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


# ---------------------------------------------------------------- independent reference





def check_frame(frame: bytes) -> None:
    """Assert the IPv4 and L4 checksums of an Ethernet frame by full recomputation."""
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    hdr = ip[:10] + b"\0\0" + ip[12:ihl]
    assert struct.unpack("!H", ip[10:12])[0] == ref_csum(hdr), "IPv4 header checksum"
    proto = ip[9]
    l4 = ip[ihl:total]
    if proto == IPPROTO_ICMP:
        assert struct.unpack("!H", l4[2:4])[0] == ref_csum(l4[:2] + b"\0\0" + l4[4:]), "ICMP checksum"
        return
    at = 16 if proto == IPPROTO_TCP else 6
    stored = struct.unpack("!H", l4[at:at + 2])[0]
    if proto == IPPROTO_UDP and stored == 0:
        return                                    # no checksum
    pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(l4))
    want = ref_csum(pseudo + l4[:at] + b"\0\0" + l4[at + 2:])
    if proto == IPPROTO_UDP and want == 0:
        want = 0xFFFF
    assert stored == want, f"L4 checksum of proto {proto}"


def records(*frames: bytes) -> np.ndarray:
    recs, drops = records_from_datagrams([vxlan_wrap(f, 1) for f in frames])
    assert not drops.any()
    return recs


def frame_bytes(rec) -> bytes:
    return bytes(rec["frame"][: rec["frame_len"]])


def with_ip_options(frame: bytes) -> bytes:
    """Insert 4 bytes of NOP options into the IPv4 header (IHL 6), header checksum redone."""
    ip = bytearray(frame[14:])
    hdr = bytearray(ip[:20]) + b"\x01\x01\x01\x01"
    hdr[0] = 0x46
    struct.pack_into("!H", hdr, 2, len(ip) + 4)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, ref_csum(bytes(hdr)))
    return frame[:14] + bytes(hdr) + bytes(ip[20:])


# ---------------------------------------------------------------- arithmetic

@given(st.lists(u16, min_size=2, max_size=40).filter(lambda w: any(w)), st.data())
def test_update16_matches_full_recomputation(words, data):
    pos = data.draw(st.integers(0, len(words) - 1))
    new = data.draw(u16)
    blob = struct.pack(f"!{len(words)}H", *words)
    old_csum = ref_csum(blob)
    words2 = list(words)
    words2[pos] = new
    blob2 = struct.pack(f"!{len(words2)}H", *words2)
    if not any(words2):
        return                                    # all-zero data has no canonical checksum
    got = int(cs.csum_update16(np.array([old_csum]), np.array([words[pos]]), np.array([new]))[0])
    assert got == ref_csum(blob2)


@given(st.lists(u16, min_size=4, max_size=40).filter(lambda w: any(w)), u32, u16)
def test_update32_and_port_delta_match_full_recomputation(words, new_addr, new_port):
    blob = struct.pack(f"!{len(words)}H", *words)
    old_addr = (words[0] << 16) | words[1]
    words2 = [new_addr >> 16, new_addr & 0xFFFF, new_port] + words[3:]
    blob2 = struct.pack(f"!{len(words2)}H", *words2)
    if not any(words2):
        return
    got = cs.csum_update_addr_port(np.array([ref_csum(blob)]), np.array([old_addr]), np.array([new_addr]),
                                   np.array([words[2]]), np.array([new_port]))
    assert int(got[0]) == ref_csum(blob2)
    words3 = [new_addr >> 16, new_addr & 0xFFFF] + words[2:]
    if any(words3):
        got = int(cs.csum_update32(np.array([ref_csum(blob)]), old_addr, new_addr)[0])
        assert got == ref_csum(struct.pack(f"!{len(words3)}H", *words3))


def test_udp_fixup_keeps_zero_and_avoids_computed_zero():
    old = np.array([0x1234, 0, 0x1234, 0], np.uint32)
    new = np.array([0, 0x5678, 0x5678, 0], np.uint32)
    is_udp = np.array([True, True, True, False])
    assert cs.udp_fixup(old, new, is_udp).tolist() == [0xFFFF, 0, 0x5678, 0]


# ---------------------------------------------------------------- field access

def test_get_put_16_32_at_per_packet_offsets():
    recs = records(*(build_frame(0x0A000001 + i, 0x0A000002, IPPROTO_UDP, 1000 + i, 53, b"abcdefgh")
                     for i in range(5)))
    frames = recs["frame"]
    idx = np.array([0, 2, 4])
    off = np.array([26, 30, 34])
    assert cs.get32(frames, idx, 26).tolist() == [0x0A000001, 0x0A000003, 0x0A000005]
    assert cs.get16(frames, idx, 34).tolist() == [1000, 1002, 1004]
    cs.put32(frames, idx, off, np.array([0xDEADBEEF, 0x01020304, 0xA0B0C0D0]))
    assert bytes(frames[0, 26:30]) == bytes.fromhex("deadbeef")
    assert bytes(frames[2, 30:34]) == bytes.fromhex("01020304")
    assert bytes(frames[4, 34:38]) == bytes.fromhex("a0b0c0d0")
    cs.put16(frames, idx, off + 4, 0xBEEF)       # scalar value
    assert cs.get16(frames, idx, off + 4).tolist() == [0xBEEF] * 3
    assert bytes(frames[1, 26:30]) == bytes.fromhex("0a000002")   # untouched row


# ---------------------------------------------------------------- rewrite_endpoint

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]), u32, u32, u16, u16,
                          st.binary(max_size=40), st.booleans()), min_size=1, max_size=12),
       u32, st.integers(0, 0xFFFF), st.sampled_from(["src", "dst"]))
def test_rewrite_endpoint_checksums(pkts, new_ip, new_port, side):
    frames = []
    for proto, s, d, sp, dp, payload, opts in pkts:
        f = build_frame(s, d, proto, sp, dp, payload, tcp_flags=0x18)
        frames.append(with_ip_options(f) if opts else f)
    recs = records(*frames)
    idx = np.arange(len(recs))
    cs.rewrite_endpoint(recs, idx, side, new_ip, np.full(len(recs), new_port), icmp_ident=True)
    for (proto, s, d, sp, dp, _, _), rec in zip(pkts, recs):
        out = frame_bytes(rec)
        check_frame(out)
        ihl = (out[14] & 0x0F) * 4
        l4 = 14 + ihl
        addr = struct.unpack("!I", out[26:30] if side == "src" else out[30:34])[0]
        assert addr == new_ip == int(rec[f"{side}_ip"])
        if proto == IPPROTO_ICMP:
            ident = struct.unpack("!H", out[l4 + 4:l4 + 6])[0]
            assert ident == (new_port or sp)      # echo has one identifier, whichever side
            assert rec["src_port"] == rec["dst_port"] == 0
        else:
            at = l4 if side == "src" else l4 + 2
            want = new_port or (sp if side == "src" else dp)
            assert struct.unpack("!H", out[at:at + 2])[0] == want == int(rec[f"{side}_port"])


def test_rewrite_keeps_udp_zero_checksum_and_never_writes_zero():
    f = bytearray(build_frame(0x0A000001, 0x08080808, IPPROTO_UDP, 5555, 53, b"hello"))
    struct.pack_into("!H", f, 14 + 20 + 6, 0)    # sender did not compute a UDP checksum
    recs = records(bytes(f))
    cs.rewrite_endpoint(recs, np.array([0]), "src", 0xCB007101, 40000)
    out = frame_bytes(recs[0])
    assert struct.unpack("!H", out[40:42])[0] == 0
    check_frame(out)

    # Pick the source port that makes the true checksum come out as 0: it must be sent as 0xFFFF.
    new_ip = 0xCB007101
    g = build_frame(0x0A000001, 0x08080808, IPPROTO_UDP, 5555, 53, b"hello!")
    l4 = bytearray(g[34:])
    struct.pack_into("!H", l4, 0, 0)                        # port and checksum out of the sum
    struct.pack_into("!H", l4, 6, 0)
    rest = ref_sum(struct.pack("!IIBBH", new_ip, 0x08080808, 0, IPPROTO_UDP, len(l4)) + bytes(l4))
    port = 0xFFFF - rest                                     # rest + port == 0xFFFF (negative zero)
    assert port != 0
    recs = records(g)
    cs.rewrite_endpoint(recs, np.array([0]), "src", new_ip, port)
    out = frame_bytes(recs[0])
    assert struct.unpack("!H", out[40:42])[0] == 0xFFFF
    check_frame(out)


def test_rewrite_only_selected_packets_and_port_zero_keeps_port():
    frames = [build_frame(0x0A000001, 0x0A000002 + i, IPPROTO_TCP, 1000 + i, 80, b"x", tcp_flags=0x10)
              for i in range(4)]
    recs = records(*frames)
    before = [frame_bytes(r) for r in recs]
    cs.rewrite_endpoint(recs, np.array([1, 3]), "dst", np.array([0xC0A80001, 0xC0A80002]),
                        np.array([8080, 0]))
    assert frame_bytes(recs[0]) == before[0] and frame_bytes(recs[2]) == before[2]
    assert recs["dst_ip"][[1, 3]].tolist() == [0xC0A80001, 0xC0A80002]
    assert recs["dst_port"].tolist() == [80, 8080, 80, 80]
    for r in recs:
        check_frame(frame_bytes(r))


def test_icmp_non_echo_keeps_identifier_and_checksum():
    f = bytearray(build_frame(0x0A000001, 0x0A000002, IPPROTO_ICMP, 7, 9, b"data"))
    f[34] = 3                                               # destination unreachable
    struct.pack_into("!H", f, 36, 0)
    struct.pack_into("!H", f, 36, ref_csum(bytes(f[34:])))
    recs = records(bytes(f))
    icmp_before = frame_bytes(recs[0])[34:]
    cs.rewrite_endpoint(recs, np.array([0]), "src", 0xCB007101, 40000, icmp_ident=True)
    out = frame_bytes(recs[0])
    assert out[34:] == icmp_before
    check_frame(out)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]), u32, u32, u16, u16,
                          st.binary(max_size=24), st.booleans(), st.sampled_from([0, 3, 8]), st.booleans()),
                min_size=1, max_size=10),
       st.data(), st.sampled_from(["src", "dst"]), st.booleans())
def test_few_packets_path_writes_what_the_column_path_writes(pkts, data, side, icmp_ident):
    """``rewrite_endpoint`` takes a byte-by-byte path for up to FEW packets: both give the same records."""
    frames = []
    for proto, s, d, sp, dp, payload, opts, icmp_type, udp_no_csum in pkts:
        f = bytearray(build_frame(s, d, proto, sp, dp, payload, tcp_flags=0x18))
        if proto == IPPROTO_ICMP:   # echo request (8), reply (0) or unreachable (3): only echo has an identifier
            f[34] = icmp_type
            struct.pack_into("!H", f, 36, 0)
            struct.pack_into("!H", f, 36, ref_csum(bytes(f[34:])))
        if proto == IPPROTO_UDP and udp_no_csum:
            struct.pack_into("!H", f, 40, 0)
        frames.append(with_ip_options(bytes(f)) if opts else bytes(f))
    chosen = data.draw(st.lists(st.integers(0, len(frames) - 1), min_size=1, max_size=min(len(frames), cs.FEW),
                                unique=True))
    idx = np.array(sorted(chosen))
    new_ip = data.draw(st.one_of(u32, st.lists(u32, min_size=len(idx), max_size=len(idx))))
    new_port = data.draw(st.one_of(u16, st.lists(u16, min_size=len(idx), max_size=len(idx))))
    few, columns = records(*frames), records(*frames)
    assert len(idx) <= cs.FEW
    cs.rewrite_endpoint(few, idx, side, np.asarray(new_ip), np.asarray(new_port), icmp_ident=icmp_ident)
    saved = cs.FEW
    cs.FEW = 0
    try:
        cs.rewrite_endpoint(columns, idx, side, np.asarray(new_ip), np.asarray(new_port), icmp_ident=icmp_ident)
    finally:
        cs.FEW = saved
    for name in few.dtype.names:   # field by field: the records' padding bytes are not written by anyone
        assert np.array_equal(few[name], columns[name]), name
    for rec in few:
        check_frame(frame_bytes(rec))
