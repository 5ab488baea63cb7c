"""The packet record: one fixed-size slot of every ring, viewed as numpy.

A record carries the stamp, the ingress timestamp, the VNI, the parsed header
fields and the inner Ethernet frame. Header fields are parsed once at ingress
(vectorised, see ``parse.py``) so that no later stage touches raw bytes to
find them. Addresses and ports are host-order integers.

Layout rules: the header part is 64 bytes and the frame starts at offset 64,
so the frame bytes of a batch are one strided 2-D block (``batch["frame"]``,
shape ``(n, MAX_FRAME)``). The record size is fixed at 1600 bytes.

Flow key: flows are bidirectional (the "symmetric 5-tuple" of cloud gateway
load balancers), so both directions of a connection share one flow id, one
seq space and one NF instance. ``direction`` is 0 when the packet goes from
the lower (ip, port) endpoint to the higher one, 1 otherwise; NFs that care
about the initiator record its direction in their per-flow state.
"""

from __future__ import annotations

import numpy as np
import numpy.ma  # noqa: F401 - loaded now, not by np.unique's first call (numpy 2.4 asks np.ma.is_masked):
                 # 15 ms idle, 77 ms in a worker under load, a stall in the middle of traffic

MAX_FRAME = 1518          # inner Ethernet frame without FCS, room for one VLAN tag
RECORD_SIZE = 1600
HEADER_SIZE = 64

ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# TCP flag bits (byte 13 of the TCP header)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# verdicts an NF returns per packet
FORWARD = 0
DROP = 1

PACKET_DTYPE = np.dtype(
    {
        "names": [
            "flow_id", "seq", "ts_ns", "key_hash", "vni",
            "src_ip", "dst_ip", "src_port", "dst_port",
            "frame_len", "l4_off", "proto", "tcp_flags", "direction", "verdict",
            "dup", "pair",
            "frame",
        ],
        "formats": [
            "<u8", "<u8", "<u8", "<u4", "<u4",
            "<u4", "<u4", "<u2", "<u2",
            "<u2", "<u2", "u1", "u1", "u1", "u1",
            "u1", "<u2",
            ("u1", (MAX_FRAME,)),
        ],
        "offsets": [
            0, 8, 16, 24, 28,
            32, 36, 40, 42,
            44, 46, 48, 49, 50, 51,
            52, 54,
            HEADER_SIZE,
        ],
        "itemsize": RECORD_SIZE,
    }
)
"""Record fields:

flow_id, seq   the stamp; flow ids come from a stamping unit's disjoint id space,
               seq counts the flow's packets from 1
ts_ns          ingress timestamp (CLOCK_MONOTONIC ns); also the NF's notion of now,
               so replay on a secondary sees the same time
key_hash       hash of the symmetric 5-tuple; bucket = key_hash % n_buckets
vni            VXLAN network identifier, preserved on egress
src_ip..dst_port  inner IPv4 header and L4 ports (0 for ICMP), host order
frame_len      bytes of ``frame`` in use
l4_off         offset of the L4 header inside ``frame`` (14 + IHL*4)
proto          IP protocol number
tcp_flags      TCP flags byte (0 for non-TCP)
direction      0: lower endpoint -> higher endpoint, 1: the other way
verdict        FORWARD or DROP, set by the NF
dup            1 on the copy the switch sends to the flow's secondary (replication)
pair           the pair (NF instance slot) the switch routed the packet for
frame          the inner Ethernet frame
"""


def empty_batch(n: int) -> np.ndarray:
    """A zeroed array of ``n`` packet records."""
    return np.zeros(n, dtype=PACKET_DTYPE)


FEW = 4   # up to this many records, plain Python on their bytes beats numpy's fixed cost per call


def raw_records(records: np.ndarray) -> memoryview | None:
    """The bytes of ``records`` as one buffer (record i at ``i * RECORD_SIZE``), or None when they are
    not laid out that way (a strided view, or a copy that dropped the dtype's padding)."""
    if records.flags.c_contiguous and records.dtype.itemsize == RECORD_SIZE:
        # through the buffer protocol, not .view(np.uint8): a structured view runs numpy's Python-level
        # safety check (1.3 against 3 us, and the io asks about ten times a round)
        return memoryview(np.ndarray((records.nbytes,), np.uint8, records))
    return None


def _header_gaps() -> list[tuple[int, int]]:
    """Byte ranges of the header that no field covers. A gather (``records[index]``) leaves them as
    whatever memory held before: what leaves the process has them zeroed (``wire``)."""
    covered = bytearray(HEADER_SIZE)
    for dtype, offset in (PACKET_DTYPE.fields[name][:2] for name in PACKET_DTYPE.names):
        end = min(offset + dtype.itemsize, HEADER_SIZE)
        covered[offset:end] = b"\1" * max(0, end - offset)
    gaps, start = [], None
    for b in range(HEADER_SIZE + 1):
        if b < HEADER_SIZE and not covered[b]:
            start = b if start is None else start
        elif start is not None:
            gaps.append((start, b))
            start = None
    return gaps


HEADER_GAPS = _header_gaps()   # [(53, 54), (56, 64)]


def copy_records(dst: np.ndarray, src: np.ndarray, index: np.ndarray | None = None) -> None:
    """``dst[:] = src`` (or ``src[index]``), moving only the frame bytes in use.

    Small packets are the common case; copying whole 1600-byte slots (which a
    plain ``src[mask]`` gather does) would spend most of the memory bandwidth
    on padding. Both sides are seen as (n, RECORD_SIZE) bytes and only the
    header plus the longest frame's bytes are copied.
    """
    n = len(src) if index is None else len(index)
    if n == 0:
        return
    if len(dst) != n:
        raise ValueError(f"copy_records: dst has {len(dst)} slots, src has {n}")
    s_raw, d_raw = raw_records(src), raw_records(dst)
    if s_raw is None or d_raw is None:
        dst[...] = src if index is None else src[index]  # e.g. np.concatenate drops the dtype's padding
        return
    if n <= FEW:  # a few records: memoryview slices beat numpy's fixed cost per call
        rows = range(n) if index is None else index.tolist()
        lengths = src["frame_len"].tolist()
        for j, i in enumerate(rows):
            width = HEADER_SIZE + lengths[i]
            d_raw[j * RECORD_SIZE: j * RECORD_SIZE + width] = s_raw[i * RECORD_SIZE: i * RECORD_SIZE + width]
        return
    src_bytes = src.view(np.uint8).reshape(len(src), RECORD_SIZE)
    dst_bytes = dst.view(np.uint8).reshape(n, RECORD_SIZE)
    if index is None:
        width = HEADER_SIZE + int(src["frame_len"].max())
        dst_bytes[:, :width] = src_bytes[:, :width]
    else:
        width = HEADER_SIZE + int(src["frame_len"][index].max())
        dst_bytes[:, :width] = src_bytes[index, :width]


_FRAME_LEN = PACKET_DTYPE.fields["frame_len"][1]   # byte offset of frame_len in a record


def record_payloads(records: np.ndarray) -> list[bytes]:
    """Each record as the bytes a secondary buffers: its header and the frame bytes in use (about
    200 bytes for a small packet, not the 1,600-byte slot), copied (ring slots are reused).
    ``records_from_payloads`` makes records of them again."""
    raw = raw_records(records)
    if raw is None:
        records = np.ascontiguousarray(records)
        raw = raw_records(records)
    out, at = [], 0
    for length in records["frame_len"].tolist():
        out.append(raw[at: at + HEADER_SIZE + min(length, MAX_FRAME)].tobytes())
        at += RECORD_SIZE
    return out


def records_from_payloads(payloads) -> tuple[np.ndarray, int]:
    """Packet records from buffered payloads (``record_payloads``, or whole records), in order, and how
    many were unusable: empty (a packet the primary had no copy of), shorter than a header, longer than
    a record, or shorter than the frame its header declares."""
    good = []
    for p in payloads:
        if p is None or not HEADER_SIZE <= len(p) <= RECORD_SIZE:
            continue
        if HEADER_SIZE + int.from_bytes(p[_FRAME_LEN: _FRAME_LEN + 2], "little") > len(p):
            continue
        good.append(p)
    records = np.zeros(len(good), dtype=PACKET_DTYPE)
    raw = raw_records(records)
    for i, p in enumerate(good):
        raw[i * RECORD_SIZE: i * RECORD_SIZE + len(p)] = p
    return records, len(payloads) - len(good)
