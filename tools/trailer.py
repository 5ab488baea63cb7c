"""The traffic generator's packet tag: a 20-byte trailer at the end of the L4 payload.

SYNOPSIS
    from deft.tools.trailer import TRAILER_LEN, write_trailer, read_trailer

    write_trailer(buf, end, packet_id, send_ns)     # in place, at buf[end-20:end]
    read_trailer(buf, length) -> (packet_id, send_ns) | None

DESCRIPTION
    The last TRAILER_LEN bytes of every tagged inner frame's L4 payload are

        offset  size  field
        0       4     magic      0xDEF7A9ED
        4       8     packet id  the generator's global send index
        12      8     send time  time.monotonic_ns() just before the send

    all big-endian. NFs rewrite headers (addresses, ports, checksums) but never
    the payload, and the payload ends where the datagram ends (VXLAN carries no
    Ethernet padding or FCS), so a receiver finds the tag at the end of what it
    received whatever happened to the headers on the way. CLOCK_MONOTONIC is
    system-wide, so a receiver process on the same host can subtract the send
    time from its own clock.

    The id and the time fields start at even offsets inside the trailer, which
    is what lets the sender patch the L4 checksum incrementally (see
    ``checksum_delta``) instead of summing the whole packet again.

EXAMPLE
    >>> buf = bytearray(64)
    >>> write_trailer(buf, 64, 7, 123)
    >>> read_trailer(buf, 64)
    (7, 123)
"""

from __future__ import annotations

import struct

TRAILER_MAGIC = 0xDEF7A9ED
TRAILER = struct.Struct("!IQQ")
TRAILER_LEN = TRAILER.size  # 20

_pack_into = TRAILER.pack_into
_unpack_from = TRAILER.unpack_from


def write_trailer(buf: bytearray | memoryview, end: int, packet_id: int, send_ns: int) -> None:
    """Write the trailer so that it ends at ``buf[end]`` (one struct call, no allocation)."""
    _pack_into(buf, end - TRAILER_LEN, TRAILER_MAGIC, packet_id, send_ns)


def make_trailer(packet_id: int = 0, send_ns: int = 0) -> bytes:
    """The trailer as bytes (for building templates)."""
    return TRAILER.pack(TRAILER_MAGIC, packet_id, send_ns)


def read_trailer(buf: bytes | bytearray | memoryview, length: int | None = None) -> tuple[int, int] | None:
    """(packet id, send ns) from the trailer that ends at ``buf[length]``, or None if there is none.

    ``length`` defaults to ``len(buf)``; pass the received byte count when
    ``buf`` is a larger preallocated receive buffer.
    """
    if length is None:
        length = len(buf)
    if length < TRAILER_LEN:
        return None
    magic, packet_id, send_ns = _unpack_from(buf, length - TRAILER_LEN)
    if magic != TRAILER_MAGIC:
        return None
    return packet_id, send_ns


def checksum_delta(packet_id: int, send_ns: int, odd_offset: bool) -> int:
    """What the id and time fields add to a one's-complement sum, modulo 0xFFFF.

    One's-complement 16-bit addition is addition modulo 0xFFFF, and
    2**16 == 1 (mod 0xFFFF), so the sum of the 16-bit words of a big-endian
    integer x is just x % 0xFFFF. When the trailer starts at an odd offset of
    the checksummed data every byte lands in the other half of its word,
    which multiplies its contribution by 256 (mod 0xFFFF).
    """
    delta = packet_id + send_ns
    if odd_offset:
        delta *= 256
    return delta % 0xFFFF


__all__ = [
    "TRAILER", "TRAILER_LEN", "TRAILER_MAGIC",
    "checksum_delta", "make_trailer", "read_trailer", "write_trailer",
]
