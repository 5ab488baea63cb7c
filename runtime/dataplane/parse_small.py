"""Plain-Python parsing of a few clean VXLAN datagrams: the low-load fast path.

A numpy batch operation costs about a microsecond however small the batch,
and ``parse.parse_into`` needs some sixty of them. At low rates a burst is one
or two datagrams, so that fixed cost would be the ingress's whole cost per
packet (and most of its latency). Here each datagram is checked and parsed
with byte reads and written into its record with one ``struct.pack_into``.

Only the common clean case is handled (IPv4 with IHL 5, UDP/ICMP, or TCP with
a 20-byte header; exactly ``parse._all_good``); if any datagram of the burst
is anything else, ``parse_small`` returns None and the caller uses the
vectorised path, which classifies drops by reason. The results are the same
record bytes as the vectorised path's (tests/unit/test_parse.py checks that
on random input).
"""

from __future__ import annotations

import struct

import numpy as np

from deft.runtime.dataplane.packet import HEADER_SIZE, MAX_FRAME, RECORD_SIZE

SMALL = 8  # at most this many datagrams go the plain-Python way

# flow_id seq ts_ns key_hash vni src_ip dst_ip src_port dst_port frame_len l4_off proto tcp_flags direction verdict
# dup pair
_HEADER = struct.Struct("<QQQIIIIHHHHBBBBBxH")  # ... verdict, dup, (pad), pair
_ADDRS = struct.Struct("!II")
_PORTS = struct.Struct("!HH")
_M64 = 0xFFFFFFFFFFFFFFFF
_K1 = 0x9E3779B97F4A7C15
_K2 = 0xC2B2AE3D27D4EB4F

# offsets in a staging row: 8-byte VXLAN header, 14-byte Ethernet header, 20-byte IPv4 header
_IP = 8 + 14
_L4 = _IP + 20


def flow_hash_one(src_ip: int, dst_ip: int, sport: int, dport: int, proto: int) -> tuple[int, int]:
    """``parse.flow_hash`` for one packet, in Python integers (same 64-bit wrap-around)."""
    a = (src_ip << 16) | sport
    b = (dst_ip << 16) | dport
    lo, hi = (a, b) if a <= b else (b, a)
    z = ((lo * _K1) & _M64) ^ (((hi + proto) * _K2) & _M64)
    z = ((z ^ (z >> 29)) * _K1) & _M64
    z ^= z >> 32
    return z & 0xFFFFFFFF, int(a > b)


def _clean(b: bytes, frame_len: int) -> bool:
    if not (b[0] & 0x08) or frame_len < 42 or frame_len > MAX_FRAME:
        return False
    if b[20] != 0x08 or b[21] != 0x00 or b[_IP] != 0x45 or (b[_IP + 6] & 0x3F) or b[_IP + 7]:
        return False
    total = (b[_IP + 2] << 8) | b[_IP + 3]
    if frame_len < 14 + total:
        return False
    proto = b[_IP + 9]
    if proto == 17:
        return 8 <= ((b[_L4 + 4] << 8) | b[_L4 + 5]) <= total - 20
    if proto == 1:
        return total >= 28 and b[_L4] <= 18
    return proto == 6 and total >= 40 and (b[_L4 + 12] >> 4) == 5


def parse_small(stage: np.ndarray, lengths: list[int], out: np.ndarray, ts_ns: int) -> int | None:
    """Parse ``len(lengths)`` clean datagrams into ``out[:n]``; None if any is not clean."""
    width = stage.shape[1]
    flat = memoryview(stage.reshape(-1))
    heads = []
    for i, length in enumerate(lengths):
        b = bytes(flat[i * width: i * width + 56])
        if len(b) < 56 or not _clean(b, length - 8):
            return None
        heads.append(b)
    dst = memoryview(out.view(np.uint8))
    for i, b in enumerate(heads):
        total = (b[_IP + 2] << 8) | b[_IP + 3]
        proto = b[_IP + 9]
        src_ip, dst_ip = _ADDRS.unpack_from(b, _IP + 12)
        sport, dport = _PORTS.unpack_from(b, _L4) if proto != 1 else (0, 0)
        flags = b[_L4 + 13] if proto == 6 else 0
        key_hash, direction = flow_hash_one(src_ip, dst_ip, sport, dport, proto)
        vni = (b[4] << 16) | (b[5] << 8) | b[6]
        flen = 14 + total
        at = i * RECORD_SIZE
        _HEADER.pack_into(dst, at, 0, 0, ts_ns, key_hash, vni, src_ip, dst_ip, sport, dport, flen, 34,
                          proto, flags, direction, 0, 0, 0)
        dst[at + HEADER_SIZE: at + HEADER_SIZE + flen] = flat[i * width + 8: i * width + 8 + flen]
    return len(heads)
