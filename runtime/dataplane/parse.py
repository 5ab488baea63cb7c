"""Vectorised VXLAN + Ethernet + IPv4 + UDP/TCP/ICMP parsing of a whole batch.

Input: a staging block of datagrams, one per row (``stage[i, :lengths[i]]``),
as the ingress receives them: 8-byte VXLAN header, then the inner frame.
Output: packet records for the good ones, and a count per drop reason for the
rest. No per-packet Python: every check is a column operation, so the cost
per packet is a few numpy element operations.

Drop reasons (``DROP_REASONS``), checked in this order:
  short_datagram     fewer than 8 bytes (no VXLAN header)
  vxlan_flag         the VXLAN I flag (VNI valid) is not set
  oversize           inner frame longer than MAX_FRAME
  short_frame        inner frame shorter than an Ethernet header
  not_ipv4           EtherType is not IPv4 (VLAN tags, IPv6, ARP ...)
  truncated_ip       frame too short for an IPv4 header, or for the IPv4 total length
  bad_version        IPv4 version field is not 4
  bad_ihl            IHL below 5, or the header runs past the total length
  fragment           MF flag set or non-zero fragment offset
  unsupported_proto  not UDP, TCP or ICMP
  truncated_l4       too short for the UDP (8), TCP (20, or its data offset) or ICMP (8) header
  bad_udp_length     UDP length field below 8 or past the end of the IP payload
  bad_tcp_offset     TCP data offset below 5 words
  bad_icmp_type      ICMP type above 18 (NR_ICMP_TYPES)

The L4 checks are those of Linux connection tracking (``udp_error``,
``tcp_error``, ``icmp_error``) minus checksum verification: a datagram that
fails them never reaches an NF. A UDP length *shorter* than the IP payload
(trailing padding) passes, and the frame is forwarded as it came, padding
included, as a forwarding Linux host does. Checksums are not verified here: the
NFs patch them incrementally, so a bad one stays bad and the receiver drops it.
"""

from __future__ import annotations

import numpy as np

from deft.runtime.dataplane.packet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_FRAME,
    PACKET_DTYPE,
    RECORD_SIZE,
)
from deft.runtime.dataplane.parse_small import SMALL, parse_small

VXLAN_HLEN = 8
STAGE_WIDTH = 2048  # receive buffer per datagram; a longer datagram is oversize anyway

DROP_REASONS = (
    "short_datagram",
    "vxlan_flag",
    "oversize",
    "short_frame",
    "not_ipv4",
    "truncated_ip",
    "bad_version",
    "bad_ihl",
    "fragment",
    "unsupported_proto",
    "truncated_l4",
    "bad_udp_length",
    "bad_tcp_offset",
    "bad_icmp_type",
)
NR_ICMP_TYPES = 18
OK = 0
_CODE = {name: i + 1 for i, name in enumerate(DROP_REASONS)}

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)


def flow_hash(src_ip, dst_ip, src_port, dst_port, proto):
    """Symmetric 32-bit flow hash and direction, vectorised.

    Both directions of a connection hash alike: endpoints are ordered as
    (ip << 16 | port) values before mixing. direction is 0 when the packet goes
    from the lower endpoint to the higher one.
    """
    a = (src_ip.astype(np.uint64) << np.uint64(16)) | src_port.astype(np.uint64)
    b = (dst_ip.astype(np.uint64) << np.uint64(16)) | dst_port.astype(np.uint64)
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    with np.errstate(over="ignore"):
        z = lo * _K1 ^ (hi + proto.astype(np.uint64)) * _K2
        z = (z ^ (z >> np.uint64(29))) * _K1
        z = z ^ (z >> np.uint64(32))
    direction = (a > b).astype(np.uint8)
    return (z & np.uint64(0xFFFFFFFF)).astype(np.uint32), direction, lo, hi


def _be16(block: np.ndarray, col) -> np.ndarray:
    return (block[:, col].astype(np.uint32) << 8) | block[:, col + 1]


def classify(block: np.ndarray, frame_len: np.ndarray, frame_off: int, vxlan: bool) -> np.ndarray:
    """Reason code per row (0 = good).

    ``block`` is (n, width) uint8 with the inner frame at column ``frame_off``;
    for VXLAN staging rows the VXLAN header sits in front of it (columns 0..7)
    and ``frame_len`` may be negative for datagrams shorter than that header.
    """
    n = len(frame_len)
    frame_len = frame_len.astype(np.int64)
    code = np.zeros(n, dtype=np.uint8)

    def flag(mask, name):
        code[(code == 0) & mask] = _CODE[name]

    if vxlan:
        flag(frame_len < 0, "short_datagram")
        flag((block[:, 0] & 0x08) == 0, "vxlan_flag")
    flag(frame_len > MAX_FRAME, "oversize")
    flag(frame_len < ETH_HLEN, "short_frame")
    e = frame_off
    flag(_be16(block, e + 12) != ETHERTYPE_IPV4, "not_ipv4")
    flag(frame_len < ETH_HLEN + 20, "truncated_ip")
    ip = e + ETH_HLEN
    flag((block[:, ip] >> 4) != 4, "bad_version")
    ihl_bytes = (block[:, ip] & 0x0F).astype(np.int64) * 4
    total = _be16(block, ip + 2).astype(np.int64)
    flag(frame_len < ETH_HLEN + total, "truncated_ip")
    flag((ihl_bytes < 20) | (ihl_bytes > total), "bad_ihl")
    frag = _be16(block, ip + 6)
    flag((frag & 0x3FFF) != 0, "fragment")  # MF bit or offset
    proto = block[:, ip + 9]
    known = (proto == IPPROTO_UDP) | (proto == IPPROTO_TCP) | (proto == IPPROTO_ICMP)
    flag(~known, "unsupported_proto")
    l4_len = total - ihl_bytes
    need = np.where(proto == IPPROTO_TCP, 20, 8)
    flag(l4_len < need, "truncated_l4")
    # the L4 header's own fields, read only where the fixed header fits
    l4 = ip + ihl_bytes
    tcp = np.flatnonzero((code == 0) & (proto == IPPROTO_TCP))
    if len(tcp):
        doff = (block[tcp, l4[tcp] + 12] >> 4).astype(np.int64) * 4
        code[tcp[doff < 20]] = _CODE["bad_tcp_offset"]
        code[tcp[doff > l4_len[tcp]]] = _CODE["truncated_l4"]
    udp = np.flatnonzero((code == 0) & (proto == IPPROTO_UDP))
    if len(udp):
        ulen = (block[udp, l4[udp] + 4].astype(np.int64) << 8) | block[udp, l4[udp] + 5]
        code[udp[(ulen < 8) | (ulen > l4_len[udp])]] = _CODE["bad_udp_length"]
    icmp = np.flatnonzero((code == 0) & (proto == IPPROTO_ICMP))
    if len(icmp):
        code[icmp[block[icmp, l4[icmp]] > NR_ICMP_TYPES]] = _CODE["bad_icmp_type"]
    return code


def parse_into(stage: np.ndarray, lengths: np.ndarray, out: np.ndarray, ts_ns: int,
               drops: np.ndarray) -> int:
    """Parse ``len(lengths)`` VXLAN datagrams; write the good ones into ``out[:k]``; return k.

    ``drops`` (int64, one slot per DROP_REASONS entry) is incremented in place.
    """
    n = len(lengths)
    if n == 0:
        return 0
    if n <= SMALL and out.flags.c_contiguous and out.dtype.itemsize == RECORD_SIZE:
        k = parse_small(stage, lengths.tolist(), out, ts_ns)  # low load: no numpy fixed cost
        if k is not None:
            return k
    stage = stage[:n]
    frame_len = lengths.astype(np.int64) - VXLAN_HLEN
    vni = (stage[:, 4].astype(np.uint32) << 16) | (stage[:, 5].astype(np.uint32) << 8) | stage[:, 6]
    return _parse_block(stage, frame_len, VXLAN_HLEN, True, vni, out, ts_ns, drops)


def parse_records_into(records: np.ndarray, out: np.ndarray, ts_ns: int, drops: np.ndarray) -> int:
    """Parse records that carry only ``frame``, ``frame_len`` and ``vni`` (the shm input)."""
    n = len(records)
    if n == 0:
        return 0
    block = np.ascontiguousarray(records).view(np.uint8).reshape(n, records.dtype.itemsize)
    return _parse_block(block, records["frame_len"], records.dtype.fields["frame"][1], False,
                        records["vni"].copy(), out, ts_ns, drops)


def _all_good(block: np.ndarray, frame_len: np.ndarray, e: int, vxlan: bool) -> bool:
    """One combined check for the common case of a clean batch (about a third of the
    numpy calls of ``classify``); only a batch that fails it is classified reason by reason."""
    ip = e + ETH_HLEN
    if vxlan and not (block[:, 0] & 0x08).all():
        return False
    vihl = block[:, ip]
    proto = block[:, ip + 9]
    total = (block[:, ip + 2].astype(np.int64) << 8) | block[:, ip + 3]
    ulen = (block[:, ip + 24].astype(np.int64) << 8) | block[:, ip + 25]
    ok = ((frame_len >= ETH_HLEN + 28) & (frame_len <= MAX_FRAME) & (frame_len >= ETH_HLEN + total)
          & (block[:, e + 12] == 0x08) & (block[:, e + 13] == 0x00)
          & (vihl == 0x45) & ((block[:, ip + 6] & 0x3F) == 0) & (block[:, ip + 7] == 0)
          & ((proto == IPPROTO_UDP) & (ulen >= 8) & (ulen <= total - 20)
             | (proto == IPPROTO_ICMP) & (total >= 28) & (block[:, ip + 20] <= NR_ICMP_TYPES)
             | (proto == IPPROTO_TCP) & (total >= 40) & (block[:, ip + 32] >> 4 == 5)))
    return bool(ok.all())


def _parse_block(stage, frame_len, e, vxlan, vni, out, ts_ns, drops) -> int:
    # IHL 5 and a plain 20-byte TCP header are the fast path; anything else is classified in full
    code = None if _all_good(stage, frame_len, e, vxlan) else classify(stage, frame_len, e, vxlan)
    if code is not None and code.any():
        counts = np.bincount(code, minlength=len(DROP_REASONS) + 1)
        drops += counts[1:]
        good = np.flatnonzero(code == 0)
        stage = stage[good]
        vni = vni[good]
    k = len(stage)
    if k == 0:
        return 0
    rec = out[:k]
    ip = e + ETH_HLEN
    ihl_bytes = (stage[:, ip] & 0x0F).astype(np.int64) * 4
    total = _be16(stage, ip + 2).astype(np.int64)
    flen = ETH_HLEN + total  # strips Ethernet padding of short frames
    proto = stage[:, ip + 9]
    addrs = np.ascontiguousarray(stage[:, ip + 12: ip + 20]).view(">u4")
    src_ip = addrs[:, 0].astype(np.uint32)
    dst_ip = addrs[:, 1].astype(np.uint32)
    idx = np.arange(k)
    l4 = ip + ihl_bytes
    has_ports = proto != IPPROTO_ICMP
    sport = np.where(has_ports, (stage[idx, l4].astype(np.uint32) << 8) | stage[idx, l4 + 1], 0)
    dport = np.where(has_ports, (stage[idx, l4 + 2].astype(np.uint32) << 8) | stage[idx, l4 + 3], 0)
    flags = np.where(proto == IPPROTO_TCP, stage[idx, np.minimum(l4 + 13, stage.shape[1] - 1)], 0)
    h, direction, _, _ = flow_hash(src_ip, dst_ip, sport, dport, proto)

    rec["flow_id"] = 0
    rec["seq"] = 0
    rec["ts_ns"] = ts_ns
    rec["vni"] = vni
    rec["src_ip"] = src_ip
    rec["dst_ip"] = dst_ip
    rec["src_port"] = sport
    rec["dst_port"] = dport
    rec["frame_len"] = flen
    rec["l4_off"] = ETH_HLEN + ihl_bytes
    rec["proto"] = proto
    rec["tcp_flags"] = flags
    rec["direction"] = direction
    rec["verdict"] = 0
    rec["dup"] = 0
    rec["pair"] = 0
    rec["key_hash"] = h
    width = int(flen.max())
    rec["frame"][:, :width] = stage[:, e: e + width]
    return k


def records_from_datagrams(datagrams: list[bytes], ts_ns: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Convenience for tests and tools: parse a list of VXLAN datagrams.

    Returns (records, drops by reason).
    """
    n = len(datagrams)
    stage = np.zeros((max(n, 1), STAGE_WIDTH), dtype=np.uint8)
    lengths = np.zeros(n, dtype=np.int64)
    for i, d in enumerate(datagrams):
        m = min(len(d), STAGE_WIDTH)
        stage[i, :m] = np.frombuffer(d[:m], dtype=np.uint8)
        lengths[i] = len(d)
    out = np.zeros(n, dtype=PACKET_DTYPE)
    drops = np.zeros(len(DROP_REASONS), dtype=np.int64)
    k = parse_into(stage, lengths, out, ts_ns, drops)
    return out[:k].copy(), drops


def drops_dict(drops: np.ndarray) -> dict[str, int]:
    return {name: int(v) for name, v in zip(DROP_REASONS, drops)}
