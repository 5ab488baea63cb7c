"""Vectorised header rewriting: RFC 1624 incremental checksums and field access.

An NF that rewrites addresses or ports must fix the IPv4 header checksum and
the TCP/UDP/ICMP checksum. Recomputing them in full would read every payload
byte; RFC 1624 (eqn. 3, ``HC' = ~(~HC + ~m + m')``) needs only the old and new
values of the changed 16-bit words. Everything here works on whole columns:
one numpy operation per step for the whole batch, no per-packet Python.

Field access (``get16``/``put16``/``get32``/``put32``) takes the 2-D
``batch["frame"]`` block, packet indices and per-packet byte offsets.

Typical use (the IPv4 header checksum after a source address change)::

    frames = batch["frame"]
    delta = word_delta32(batch["src_ip"][idx], new_ip)
    put16(frames, idx, IP_CSUM, csum_apply(get16(frames, idx, IP_CSUM), delta))
    put32(frames, idx, IP_SRC, new_ip)

``rewrite_endpoint`` does exactly that for an address and a port together,
including the L4 checksum; NAT and load balancer both use it.
"""

from __future__ import annotations

import numpy as np

from deft.runtime.dataplane.packet import (ETH_HLEN, HEADER_SIZE, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, RECORD_SIZE,
                                          raw_records)

# Offsets inside the inner Ethernet frame (the parser accepts untagged IPv4 only).
IP_CSUM = ETH_HLEN + 10
IP_SRC = ETH_HLEN + 12
IP_DST = ETH_HLEN + 16

_U32 = np.uint32
_M16 = _U32(0xFFFF)

# Per-protocol offsets inside the L4 header (index: IP protocol number).
#   _CSUM_AT   where the L4 checksum is
#   _PSEUDO    1 if the checksum covers the IPv4 pseudo-header (TCP, UDP), 0 for ICMP
_CSUM_AT = np.zeros(256, np.int64)
_CSUM_AT[IPPROTO_TCP], _CSUM_AT[IPPROTO_UDP], _CSUM_AT[IPPROTO_ICMP] = 16, 6, 2
_PSEUDO = np.zeros(256, _U32)
_PSEUDO[IPPROTO_TCP] = _PSEUDO[IPPROTO_UDP] = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_IDENT = 4          # offset of the echo identifier inside the ICMP header


# --------------------------------------------------------------------- arithmetic

def fold(s: np.ndarray) -> np.ndarray:
    """Fold a (small) uint32 sum of 16-bit words into 16 bits, end-around carry.

    Two folds suffice for sums below 2**31 (at most 0x7FFF + 0xFFFF after the first).
    """
    s = (s & _M16) + (s >> 16)
    return (s & _M16) + (s >> 16)


def word_delta16(old, new) -> np.ndarray:
    """``~m + m'`` for one 16-bit word (unfolded uint32): what a checksum must absorb."""
    return (np.asarray(old, _U32) ^ _M16) + np.asarray(new, _U32)


def word_delta32(old, new) -> np.ndarray:
    """``~m + m'`` summed over both 16-bit halves of a 32-bit field (an IPv4 address)."""
    old = np.asarray(old, _U32)
    new = np.asarray(new, _U32)
    return ((old >> 16) ^ _M16) + ((old & _M16) ^ _M16) + (new >> 16) + (new & _M16)


def csum_apply(csum, delta) -> np.ndarray:
    """RFC 1624 eqn. 3: the checksum after the changes summed in ``delta``."""
    return fold((np.asarray(csum, _U32) ^ _M16) + delta) ^ _M16


def csum_update16(csum, old, new) -> np.ndarray:
    """Checksum after one 16-bit word changed from ``old`` to ``new``."""
    return csum_apply(csum, word_delta16(old, new))


def csum_update32(csum, old, new) -> np.ndarray:
    """Checksum after one 32-bit field changed from ``old`` to ``new``."""
    return csum_apply(csum, word_delta32(old, new))


def csum_update_addr_port(csum, old_ip, new_ip, old_port, new_port) -> np.ndarray:
    """TCP/UDP checksum after a (pseudo-header) address and a port changed together."""
    return csum_apply(csum, word_delta32(old_ip, new_ip) + word_delta16(old_port, new_port))


def udp_fixup(old, new, is_udp) -> np.ndarray:
    """RFC 768 for rewritten UDP checksums: 0 ("no checksum") stays 0, a computed 0 is sent as 0xFFFF."""
    old = np.asarray(old)
    out = np.where(is_udp & (new == 0), _U32(0xFFFF), new)
    return np.where(is_udp & (old == 0), _U32(0), out)


# --------------------------------------------------------------------- field access

def get16(frames: np.ndarray, idx: np.ndarray, off) -> np.ndarray:
    """Big-endian 16-bit fields of ``frames[idx]`` at byte offsets ``off`` (uint32).

    frames  the 2-D ``batch["frame"]`` block
    idx     packet indices; off: one offset per packet (or a scalar)
    """
    return (frames[idx, off].astype(_U32) << 8) | frames[idx, off + 1]


def put16(frames: np.ndarray, idx: np.ndarray, off, value) -> None:
    """Store big-endian 16-bit ``value`` (array or scalar) at ``frames[idx, off]``."""
    value = np.asarray(value, _U32)
    frames[idx, off] = value >> 8
    frames[idx, off + 1] = value & 0xFF


def get32(frames: np.ndarray, idx: np.ndarray, off) -> np.ndarray:
    """Big-endian 32-bit fields of ``frames[idx]`` at byte offsets ``off`` (uint32)."""
    return (get16(frames, idx, off) << 16) | get16(frames, idx, np.asarray(off) + 2)


def put32(frames: np.ndarray, idx: np.ndarray, off, value) -> None:
    """Store big-endian 32-bit ``value`` (array or scalar) at ``frames[idx, off]``."""
    value = np.asarray(value, _U32)
    put16(frames, idx, off, value >> 16)
    put16(frames, idx, np.asarray(off) + 2, value & _M16)


# --------------------------------------------------------------------- rewriting

# 16-bit word positions (frame offset / 2): every field rewritten here is word aligned,
# since the IPv4 header starts at 14 and the L4 header at 14 + 4 * IHL.
_W_IP_CSUM, _W_SRC, _W_DST = IP_CSUM // 2, IP_SRC // 2, IP_DST // 2
_W_CSUM_AT = _CSUM_AT // 2
_W_ICMP_IDENT = ICMP_IDENT // 2
_BE16 = np.dtype(">u2")


def rewrite_endpoint(batch: np.ndarray, idx: np.ndarray, side: str, new_ip, new_port,
                     icmp_ident: bool = False) -> None:
    """Rewrite the source or destination (ip, port) of packets ``idx``, checksums included.

    side        "src" or "dst"
    new_ip      host-order address, scalar or one per packet
    new_port    one per packet (or scalar); 0 keeps the packet's port
    icmp_ident  for ICMP echo request/reply, treat the identifier as the port
                (echo has a single identifier, so on either side; source NAT
                of pings); otherwise ICMP keeps its identifier

    The frame and the parsed fields (src_ip/dst_ip, src_port/dst_port) change
    together, so later stages see a record consistent with its frame.

    Cost: the headers of the selected packets are copied out as one small
    block of big-endian 16-bit words (up to the largest L4 offset + 18 bytes,
    through the TCP checksum), edited with column operations, and written back
    in one go: measured about twice as fast as scattered byte accesses into
    the 1600-byte records.
    """
    k = len(idx)
    if k == 0:
        return
    raw = raw_records(batch) if k <= FEW else None
    if raw is not None and _rewrite_few(batch, raw, idx, side, new_ip, new_port, icmp_ident):
        return
    frames = batch["frame"]
    l4 = batch["l4_off"][idx] >> 1                       # in words
    nw = int(l4.max()) + 9                              # words through the TCP checksum
    words = frames[idx, : 2 * nw].view(_BE16).astype(_U32)   # (k, nw)
    flat = words.reshape(-1)                            # per-packet L4 fields by flat position
    l4 = l4 + np.arange(0, k * nw, nw)
    if side == "src":
        ip_field, port_field, ip_w, port_w = "src_ip", "src_port", _W_SRC, 0
    else:
        ip_field, port_field, ip_w, port_w = "dst_ip", "dst_port", _W_DST, 1
    new_ip = np.asarray(new_ip, _U32)
    new_port = np.asarray(new_port, _U32)
    if new_port.ndim == 0:
        new_port = np.full(k, new_port, _U32)

    # IPv4 header: only the address changes.
    hi, lo = new_ip >> 16, new_ip & _M16
    d_ip = (words[:, ip_w] ^ _M16) + (words[:, ip_w + 1] ^ _M16) + hi + lo
    words[:, _W_IP_CSUM] = csum_apply(words[:, _W_IP_CSUM], d_ip)
    words[:, ip_w] = hi
    words[:, ip_w + 1] = lo
    batch[ip_field][idx] = new_ip

    # L4: where the "port" lives (TCP/UDP source port, destination port; ICMP echo identifier).
    proto = batch["proto"][idx]
    is_icmp = proto == IPPROTO_ICMP
    any_icmp = bool(is_icmp.any())
    port_at = l4 + port_w
    touch_port = new_port != 0
    if any_icmp:
        icmp_type = flat[l4] >> 8
        echo = (icmp_type == ICMP_ECHO_REQUEST) | (icmp_type == ICMP_ECHO_REPLY)
        if icmp_ident:
            touch_port &= ~is_icmp | echo
            port_at = np.where(is_icmp, l4 + _W_ICMP_IDENT, port_at)
        else:
            touch_port &= ~is_icmp
    d_port = np.where(touch_port, word_delta16(flat[port_at], new_port), _U32(0))

    # L4 checksum: the pseudo-header address (TCP/UDP only) and the port word.
    csum_at = l4 + _W_CSUM_AT[proto]
    old_csum = flat[csum_at]
    new_csum = csum_apply(old_csum, d_ip * _PSEUDO[proto] + d_port)
    is_udp = proto == IPPROTO_UDP
    if is_udp.any():
        new_csum = udp_fixup(old_csum, new_csum, is_udp)
    if any_icmp:
        # An ICMP packet whose identifier stays has nothing in its checksum that changed.
        new_csum = np.where(is_icmp & ~touch_port, old_csum, new_csum)
    flat[csum_at] = new_csum
    flat[port_at[touch_port]] = new_port[touch_port]
    frames[idx, : 2 * nw] = words.astype(_BE16).view(np.uint8)
    ports = touch_port & ~is_icmp if any_icmp else touch_port   # records carry 0 ports for ICMP
    if ports.any():
        batch[port_field][idx[ports]] = new_port[ports]


# --------------------------------------------------------------------- a few packets

# Up to this many packets, plain integer arithmetic on the bytes beats ~30 numpy calls: a NAT round
# (ordering, NAT, output) of 4 / 8 / 12 / 16 packets cost 50 / 66 / 85 / 147 us this way, 91 / 91 / 100 /
# 155 us with columns (hot; cold, numpy's share grows)
FEW = 8
_L4_CSUM = {IPPROTO_TCP: 16, IPPROTO_UDP: 6, IPPROTO_ICMP: 2}


def _apply(csum: int, delta: int) -> int:
    """``csum_apply`` on Python ints (delta: a few unfolded words, far below 2**31)."""
    s = (csum ^ 0xFFFF) + delta
    s = (s & 0xFFFF) + (s >> 16)
    return ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF


def _rewrite_few(batch: np.ndarray, raw: memoryview, idx: np.ndarray, side: str, new_ip, new_port,
                 icmp_ident: bool) -> bool:
    """``rewrite_endpoint`` for a few packets of a contiguous batch (``raw``: its bytes), with the same
    result (``tests/unit/test_checksum.py`` compares the two). A quiet worker's batch is one or two
    packets; the column path then costs its fixed ~30 numpy calls, each several microseconds on
    the cold cache of a worker that just woke (``benchmarks/wake_cost.py``).

    False (nothing written) for a protocol without an L4 checksum rule here: the column path decides.
    """
    rows = idx.tolist()
    protos = batch["proto"][idx].tolist()
    if any(p not in _L4_CSUM for p in protos):
        return False
    l4s = batch["l4_off"][idx].tolist()
    ips = [int(new_ip)] * len(rows) if np.ndim(new_ip) == 0 else np.asarray(new_ip).tolist()
    ports = [int(new_port)] * len(rows) if np.ndim(new_port) == 0 else np.asarray(new_port).tolist()
    src = side == "src"
    ip_at, port_w = (IP_SRC, 0) if src else (IP_DST, 2)
    ip_field, port_field = batch["src_ip" if src else "dst_ip"], batch["src_port" if src else "dst_port"]
    for row, proto, l4, ip, port in zip(rows, protos, l4s, ips, ports):
        f = row * RECORD_SIZE + HEADER_SIZE   # the frame's first byte

        def word(off: int) -> int:
            return raw[f + off] << 8 | raw[f + off + 1]

        def put(off: int, value: int) -> None:
            raw[f + off], raw[f + off + 1] = value >> 8, value & 0xFF

        hi, lo = ip >> 16, ip & 0xFFFF
        d_ip = (word(ip_at) ^ 0xFFFF) + (word(ip_at + 2) ^ 0xFFFF) + hi + lo
        put(IP_CSUM, _apply(word(IP_CSUM), d_ip))
        put(ip_at, hi)
        put(ip_at + 2, lo)
        ip_field[row] = ip
        touch, port_at = port != 0, l4 + port_w
        is_icmp = proto == IPPROTO_ICMP
        if is_icmp:
            touch = touch and icmp_ident and raw[f + l4] in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            port_at = l4 + ICMP_IDENT
        if is_icmp and not touch:
            continue   # nothing ICMP's checksum covers changed (it has no pseudo-header)
        csum_at = l4 + _L4_CSUM[proto]
        old = word(csum_at)
        new = _apply(old, (0 if is_icmp else d_ip) + ((word(port_at) ^ 0xFFFF) + port if touch else 0))
        if proto == IPPROTO_UDP:   # RFC 768, as udp_fixup
            new = 0 if old == 0 else (new or 0xFFFF)
        put(csum_at, new)
        if touch:
            put(port_at, port)
            if not is_icmp:
                port_field[row] = port
    return True
