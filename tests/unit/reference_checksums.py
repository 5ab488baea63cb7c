"""Checksums computed from scratch with struct, independent of the code under test (nfs/checksum.py)."""

from __future__ import annotations

import struct

from deft.runtime.dataplane.packet import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP


def ones_sum(data: bytes) -> int:
    """One's complement sum of 16-bit big-endian words, folded (not complemented)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    return ~ones_sum(data) & 0xFFFF


def assert_checksums(frame: bytes) -> None:
    """IPv4 header checksum and the ICMP/TCP/UDP checksum of an Ethernet frame (IHL 5) are right."""
    ip = frame[14:34]
    assert struct.unpack("!H", ip[10:12])[0] == csum(ip[:10] + b"\0\0" + ip[12:])
    l4 = frame[34:14 + struct.unpack("!H", ip[2:4])[0]]
    proto = ip[9]
    if proto == IPPROTO_ICMP:
        assert struct.unpack("!H", l4[2:4])[0] == csum(l4[:2] + b"\0\0" + l4[4:])
        return
    at = 16 if proto == IPPROTO_TCP else 6
    want = csum(ip[12:20] + struct.pack("!BBH", 0, proto, len(l4)) + l4[:at] + b"\0\0" + l4[at + 2:])
    if proto == IPPROTO_UDP:
        want = want or 0xFFFF  # RFC 768: a computed 0 is sent as 0xFFFF
    assert struct.unpack("!H", l4[at:at + 2])[0] == want
