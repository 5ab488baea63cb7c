"""Build inner Ethernet/IPv4 frames and VXLAN datagrams (RFC 7348) from fields.

Used by the traffic generator, the tests and the benchmarks. Checksums are
computed in full here (the one-time, per-packet path); NFs update them
incrementally on the batch path.
"""

from __future__ import annotations

import struct

from deft.runtime.dataplane.packet import ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP

VXLAN_HLEN = 8
VXLAN_FLAG_I = 0x08          # "VNI valid" flag, first byte of the VXLAN header
VXLAN_PORT = 4789

_SRC_MAC = bytes.fromhex("020000000001")
_DST_MAC = bytes.fromhex("020000000002")


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 one's-complement sum, folded and complemented."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def ipv4_header(src_ip: int, dst_ip: int, proto: int, payload_len: int, ident: int = 0,
                ttl: int = 64, flags_frag: int = 0x4000) -> bytes:
    """20-byte IPv4 header with a correct checksum (DF set, no fragment)."""
    hdr = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + payload_len, ident & 0xFFFF, flags_frag,
                      ttl, proto, 0, src_ip, dst_ip)
    csum = internet_checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:]


def _pseudo_header(src_ip: int, dst_ip: int, proto: int, length: int) -> bytes:
    return struct.pack("!IIBBH", src_ip, dst_ip, 0, proto, length)


def udp_segment(src_ip: int, dst_ip: int, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = internet_checksum(_pseudo_header(src_ip, dst_ip, IPPROTO_UDP, length) + seg)
    if csum == 0:
        csum = 0xFFFF  # RFC 768: zero means "no checksum"
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def tcp_segment(src_ip: int, dst_ip: int, sport: int, dport: int, payload: bytes,
                flags: int, seq: int = 0, ack: int = 0, window: int = 65535) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, window, 0, 0) + payload
    csum = internet_checksum(_pseudo_header(src_ip, dst_ip, IPPROTO_TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def icmp_echo(ident: int, seqno: int, payload: bytes) -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seqno & 0xFFFF) + payload
    csum = internet_checksum(msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def ethernet_frame(ip_packet: bytes, ethertype: int = 0x0800) -> bytes:
    return _DST_MAC + _SRC_MAC + struct.pack("!H", ethertype) + ip_packet


def build_frame(src_ip: int, dst_ip: int, proto: int, sport: int = 0, dport: int = 0,
                payload: bytes = b"", tcp_flags: int = 0x10, tcp_seq: int = 0, tcp_ack: int = 0,
                ident: int = 0) -> bytes:
    """A complete inner Ethernet + IPv4 + UDP/TCP/ICMP frame with correct checksums."""
    if proto == IPPROTO_UDP:
        l4 = udp_segment(src_ip, dst_ip, sport, dport, payload)
    elif proto == IPPROTO_TCP:
        l4 = tcp_segment(src_ip, dst_ip, sport, dport, payload, tcp_flags, tcp_seq, tcp_ack)
    elif proto == IPPROTO_ICMP:
        l4 = icmp_echo(sport, dport, payload)
    else:
        l4 = payload
    return ethernet_frame(ipv4_header(src_ip, dst_ip, proto, len(l4), ident) + l4)


def vxlan_header(vni: int) -> bytes:
    """8-byte VXLAN header: flags (I set), 24 reserved bits, VNI, 8 reserved bits."""
    return struct.pack("!II", VXLAN_FLAG_I << 24, (vni & 0xFFFFFF) << 8)


def vxlan_wrap(frame: bytes, vni: int) -> bytes:
    return vxlan_header(vni) + frame


def vxlan_unwrap(datagram: bytes) -> tuple[int, bytes]:
    """(vni, inner frame); raises ValueError on a short datagram or a missing I flag."""
    if len(datagram) < VXLAN_HLEN:
        raise ValueError("short VXLAN datagram")
    flags, vni_word = struct.unpack_from("!II", datagram)
    if not (flags >> 24) & VXLAN_FLAG_I:
        raise ValueError("VXLAN I flag not set")
    return vni_word >> 8, datagram[VXLAN_HLEN:]


__all__ = [
    "ETH_HLEN", "VXLAN_HLEN", "VXLAN_PORT", "build_frame", "internet_checksum",
    "vxlan_wrap", "vxlan_unwrap", "vxlan_header",
]
