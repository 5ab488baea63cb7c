"""Packet plans: flows, prebuilt datagram templates, synthetic traffic and pcap replay.

A plan holds every datagram the sender will send, built before the clock
starts; the sender only writes the trailer (and TCP sequence numbers) and
patches the L4 checksum (see ``Template``).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deft.runtime.dataplane.frames import VXLAN_HLEN, build_frame, internet_checksum, vxlan_wrap
from deft.runtime.dataplane.packet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_FRAME,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
)
from deft.tools.pcap import LINKTYPE_ETHERNET, PcapReader
from deft.tools.trafficgen.common import U16, TrafficGenError
from deft.tools.trailer import TRAILER_LEN, make_trailer

IPV4_HLEN = 20
UDP_HLEN = 8
TCP_HLEN = 20
MIN_UDP_FRAME = ETH_HLEN + IPV4_HLEN + UDP_HLEN + TRAILER_LEN    # 62
MIN_TCP_FRAME = ETH_HLEN + IPV4_HLEN + TCP_HLEN + TRAILER_LEN    # 74
# Shortest datagram that can hold a tagged packet; shorter ones are foreign.
MIN_TAGGED_DATAGRAM = VXLAN_HLEN + MIN_UDP_FRAME

# The packet kinds of a TCP flow, in template order, and their flags
SYN, SYN_ACK, ACK, DATA, FIN = range(5)
TCP_KIND_FLAGS = (TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK)


@dataclass(frozen=True)
class Flow:
    """A flow as the client sends it; the server side swaps addresses and ports."""
    src_ip: int
    dst_ip: int
    proto: int
    sport: int
    dport: int


def make_flows(count: int, tcp_ratio: float, seed: int) -> list[Flow]:
    """``count`` distinct 5-tuples: 10.x.y.z -> 198.51.100.x, round(count * tcp_ratio) of them TCP."""
    rng = random.Random(seed)
    n_tcp = round(count * tcp_ratio)
    tcp_flags = [True] * n_tcp + [False] * (count - n_tcp)
    rng.shuffle(tcp_flags)
    seen: set[tuple[int, int, int, int, int]] = set()
    flows = []
    for is_tcp in tcp_flags:
        proto = IPPROTO_TCP if is_tcp else IPPROTO_UDP
        while True:
            src = (10 << 24) | rng.randrange(0, 1 << 16) << 8 | rng.randrange(1, 255)
            dst = (198 << 24) | (51 << 16) | (100 << 8) | rng.randrange(1, 255)
            sport = rng.randrange(1024, 65536)
            dport = rng.choice((80, 443, 8080)) if is_tcp else rng.choice((53, 123, 443, 4500))
            key = (src, dst, proto, sport, dport)
            if key not in seen:
                seen.add(key)
                flows.append(Flow(*key))
                break
    return flows


# A template is a prebuilt VXLAN datagram plus what the sender patches per packet:
#   (buf, csum_off, trailer_off, base_sum, align_mult, seq_off)
# csum_off/seq_off/trailer_off are offsets in buf; trailer_off 0 means "untagged, send as is";
# seq_off 0 means "no TCP sequence number to write"; base_sum is the one's-complement sum
# (mod 0xFFFF) of pseudo-header + L4 segment with checksum, id, time and seq fields zero;
# align_mult is 1, or 256 when the trailer starts at an odd offset of the L4 segment.
Template = tuple[bytearray, int, int, int, int, int]


@dataclass
class PacketPlan:
    """Everything the sender sends and the analysis needs to know about it, indexed by packet id.

    templates      prebuilt datagrams (see ``Template``)
    pkt_template   template index per packet id
    pkt_seqval     TCP sequence number to write per packet (0 for UDP and untagged)
    pkt_flow       flow index per packet id (bidirectional flow); -1 for untagged packets
    pkt_flow_seq   1-based position of the packet within its flow
    offsets_ns     optional: when each packet is due, relative to the start (pcap timing)
    info           description for the report (mode, flows, frame size, pcap counts)
    """
    templates: list[Template]
    pkt_template: np.ndarray
    pkt_seqval: np.ndarray
    pkt_flow: np.ndarray
    pkt_flow_seq: np.ndarray
    offsets_ns: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.pkt_template)

    def datagram_lengths(self) -> np.ndarray:
        """Length of each packet's VXLAN datagram (UDP payload bytes)."""
        lengths = np.array([len(t[0]) for t in self.templates], dtype=np.int64)
        return lengths[self.pkt_template]


def _ones_sum_mod(data: bytes | bytearray) -> int:
    """One's-complement sum of big-endian 16-bit words, as a residue mod 0xFFFF."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    return sum(struct.unpack(f"!{len(data) // 2}H", data)) % 0xFFFF


def _make_template(datagram: bytes, patch_seq: bool) -> Template:
    """Template for a tagged VXLAN datagram whose trailer id/time (and TCP seq, if patched) are 0."""
    buf = bytearray(datagram)
    ip = VXLAN_HLEN + ETH_HLEN
    l4 = ip + (buf[ip] & 0x0F) * 4
    end = ip + U16.unpack_from(buf, ip + 2)[0]
    proto = buf[ip + 9]
    csum_off = l4 + (6 if proto == IPPROTO_UDP else 16)
    segment = bytearray(buf[l4:end])
    segment[csum_off - l4: csum_off - l4 + 2] = b"\x00\x00"
    pseudo = bytes(buf[ip + 12: ip + 20]) + struct.pack("!BBH", 0, proto, end - l4)
    base = (_ones_sum_mod(pseudo) + _ones_sum_mod(segment)) % 0xFFFF
    trailer_off = end - TRAILER_LEN
    align = 256 if (trailer_off - l4) % 2 else 1
    seq_off = l4 + 4 if (patch_seq and proto == IPPROTO_TCP) else 0
    return (buf, csum_off, trailer_off, base, align, seq_off)


def _untagged_template(datagram: bytes) -> Template:
    return (bytearray(datagram), 0, 0, 0, 1, 0)


def _flow_templates(flow: Flow, frame_size: int, vni: int) -> list[Template]:
    """UDP: [data]. TCP: one per TCP_KINDS entry; seq is written per packet, acks are fixed."""
    if flow.proto == IPPROTO_UDP:
        payload = bytes(frame_size - MIN_UDP_FRAME) + make_trailer()
        frame = build_frame(flow.src_ip, flow.dst_ip, IPPROTO_UDP, flow.sport, flow.dport, payload)
        return [_make_template(vxlan_wrap(frame, vni), patch_seq=False)]
    payload = bytes(frame_size - MIN_TCP_FRAME) + make_trailer()
    c_isn, s_isn = _isns(flow)
    span = 1 + len(payload)  # a SYN with data consumes its data and one sequence number
    acks = (0, c_isn + span, s_isn + span, s_isn + span, s_isn + span)
    templates = []
    for kind, (flags, ack) in enumerate(zip(TCP_KIND_FLAGS, acks)):
        if kind == SYN_ACK:
            ends = (flow.dst_ip, flow.src_ip, flow.dport, flow.sport)
        else:
            ends = (flow.src_ip, flow.dst_ip, flow.sport, flow.dport)
        frame = build_frame(ends[0], ends[1], IPPROTO_TCP, ends[2], ends[3], payload,
                            tcp_flags=flags, tcp_seq=0, tcp_ack=ack)
        templates.append(_make_template(vxlan_wrap(frame, vni), patch_seq=True))
    return templates


def _spread(packets: int, flows: int) -> np.ndarray:
    counts = np.full(flows, packets // flows, dtype=np.int64)
    counts[: packets % flows] += 1
    return np.maximum(counts, 1)


def _isns(flow: Flow) -> tuple[int, int]:
    """Client and server initial sequence numbers, derived from the 5-tuple (reproducible)."""
    rng = random.Random(hash((flow.src_ip, flow.dst_ip, flow.sport, flow.dport)) & 0xFFFFFFFF)
    return rng.getrandbits(32), rng.getrandbits(32)


def _interleave(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flow, 1-based per-flow seq) per send position: round-robin, shuffled within each round.

    Sort key = round + a random fraction: rounds stay in order (so each flow's
    packets stay in order) while the flows' order varies from round to round.
    Flows with more packets (``--hot-flows``) have shorter rounds (the key is
    divided by the flow's count), so every flow's packets spread over the whole run.
    """
    total = int(counts.sum())
    flow = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    seq = np.arange(total, dtype=np.int64) - np.repeat(starts, counts) + 1
    key = (seq - 1) + np.random.default_rng(seed).random(total)
    if (counts != counts[0]).any():
        key = key / counts[flow]
    order = np.argsort(key, kind="stable")
    return flow[order], seq[order]


def build_synthetic_plan(flows: Sequence[Flow], packets: int, frame_size: int, vni: int,
                         seed: int = 1, hot_flows: int = 0, hot_share: float = 0.0) -> PacketPlan:
    """Plan ``packets`` packets over ``flows``, spread evenly (the first flows get the remainder);
    or ``hot_share`` of them over the first ``hot_flows`` flows and the rest over the others (skew)."""
    n_flows = len(flows)
    if hot_flows and 0 < hot_flows < n_flows:
        hot = int(packets * hot_share)
        counts = np.concatenate([_spread(hot, hot_flows), _spread(packets - hot, n_flows - hot_flows)])
    else:
        counts = _spread(packets, n_flows)
    pkt_flow, pkt_seq = _interleave(counts, seed)

    templates: list[Template] = []
    first_template = np.zeros(n_flows, dtype=np.int64)
    is_tcp = np.zeros(n_flows, dtype=bool)
    c_isn = np.zeros(n_flows, dtype=np.int64)
    s_isn = np.zeros(n_flows, dtype=np.int64)
    for i, flow in enumerate(flows):
        first_template[i] = len(templates)
        templates.extend(_flow_templates(flow, frame_size, vni))
        if flow.proto == IPPROTO_TCP:
            is_tcp[i] = True
            c_isn[i], s_isn[i] = _isns(flow)

    kind = _tcp_kinds(pkt_seq, counts[pkt_flow])
    tcp = is_tcp[pkt_flow]
    pkt_template = first_template[pkt_flow] + np.where(tcp, kind, 0)
    payload = frame_size - MIN_TCP_FRAME + TRAILER_LEN      # TCP payload bytes per packet
    # The client's packets after the SYN: the ACK (flow seq 3) at ISN + 1 + payload, then +payload each.
    client_seq = c_isn[pkt_flow] + 1 + (pkt_seq - 2) * payload
    seqval = np.select([kind == SYN, kind == SYN_ACK], [c_isn[pkt_flow], s_isn[pkt_flow]], client_seq)
    seqval = np.where(tcp, seqval % (1 << 32), 0)
    n_tcp = int(is_tcp.sum())
    info = {"mode": "synthetic", "flows": n_flows, "tcp_flows": n_tcp, "udp_flows": n_flows - n_tcp,
            "frame_size": frame_size, "vni": vni}
    return PacketPlan(templates, pkt_template.astype(np.int64), seqval.astype(np.int64),
                      pkt_flow, pkt_seq, None, info)


def _tcp_kinds(seq: np.ndarray, flow_len: np.ndarray) -> np.ndarray:
    """Kind of each packet of a TCP flow from its position: SYN, SYN-ACK, ACK, data..., FIN last."""
    fin = (seq == flow_len) & (flow_len >= 4)
    return np.select([seq == 1, seq == 2, seq == 3, fin], [SYN, SYN_ACK, ACK, FIN], DATA).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# pcap replay


def _tag_frame(frame: bytes) -> bytes | None:
    """The frame with a zero trailer appended to its UDP/TCP payload and lengths/IP checksum fixed.

    Returns None for IPv4 packets that cannot carry a trailer (not UDP/TCP, fragments, L4
    header cut short). The L4 checksum is left for ``_make_template`` to settle.
    """
    ip = ETH_HLEN
    ihl = (frame[ip] & 0x0F) * 4
    total = U16.unpack_from(frame, ip + 2)[0]
    proto = frame[ip + 9]
    fragment = U16.unpack_from(frame, ip + 6)[0] & 0x3FFF
    l4_len = total - ihl
    if fragment or proto not in (IPPROTO_UDP, IPPROTO_TCP):
        return None
    if proto == IPPROTO_UDP and l4_len < UDP_HLEN:
        return None
    if proto == IPPROTO_TCP and (l4_len < TCP_HLEN or (frame[ip + ihl + 12] >> 4) * 4 > l4_len):
        return None
    header = bytearray(frame[ip: ip + ihl])
    U16.pack_into(header, 2, total + TRAILER_LEN)
    U16.pack_into(header, 10, 0)
    U16.pack_into(header, 10, internet_checksum(header))
    segment = bytearray(frame[ip + ihl: ip + total]) + make_trailer()
    if proto == IPPROTO_UDP:
        U16.pack_into(segment, 4, len(segment))
    return bytes(frame[:ip]) + bytes(header) + bytes(segment)


def _ipv4_problem(frame: bytes) -> str | None:
    """Why a frame cannot be replayed (counted and skipped), or None."""
    if len(frame) < ETH_HLEN or U16.unpack_from(frame, 12)[0] != ETHERTYPE_IPV4:
        return "skipped_non_ipv4"
    if len(frame) < ETH_HLEN + IPV4_HLEN or frame[ETH_HLEN] >> 4 != 4:
        return "skipped_malformed"
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    total = U16.unpack_from(frame, ETH_HLEN + 2)[0]
    if ihl < IPV4_HLEN or total < ihl:
        return "skipped_malformed"
    if len(frame) < ETH_HLEN + total:
        return "skipped_truncated"
    return None


def _flow_key(frame: bytes) -> tuple[int, int, int]:
    """Bidirectional flow key of an IPv4 frame: (proto, lower endpoint, higher endpoint)."""
    ip = ETH_HLEN
    proto = frame[ip + 9]
    src, dst = struct.unpack_from("!II", frame, ip + 12)
    sport = dport = 0
    if proto in (IPPROTO_UDP, IPPROTO_TCP):
        sport, dport = struct.unpack_from("!HH", frame, ip + (frame[ip] & 0x0F) * 4)
    a, b = (src << 16) | sport, (dst << 16) | dport
    return (proto, min(a, b), max(a, b))


def build_pcap_plan(path: str, vni: int, packets: int | None = None) -> PacketPlan:
    """Plan a replay of a classic pcap file's Ethernet frames (see the --pcap option)."""
    counts = {"skipped_non_ipv4": 0, "skipped_malformed": 0, "skipped_truncated": 0,
              "untagged": 0, "oversize_after_tagging": 0}
    templates: list[Template] = []
    flows: list[int] = []
    times: list[int] = []
    flow_index: dict[tuple[int, int, int], int] = {}
    with PcapReader(path) as reader:
        if reader.linktype != LINKTYPE_ETHERNET:
            raise TrafficGenError(f"--pcap {path}: link type {reader.linktype}, only Ethernet (1) can be replayed")
        for ts_ns, frame in reader:
            if packets is not None and len(templates) >= packets:
                break
            problem = _ipv4_problem(frame)
            if problem:
                counts[problem] += 1
                continue
            tagged = _tag_frame(frame)
            if tagged is None:
                counts["untagged"] += 1
                templates.append(_untagged_template(vxlan_wrap(frame, vni)))
                flows.append(-1)
            else:
                counts["oversize_after_tagging"] += len(tagged) > MAX_FRAME
                templates.append(_make_template(vxlan_wrap(tagged, vni), patch_seq=False))
                flows.append(flow_index.setdefault(_flow_key(frame), len(flow_index)))
            times.append(ts_ns)
        counts["snapped_records"] = reader.snapped
    pkt_flow = np.array(flows, dtype=np.int64)
    offsets = np.maximum.accumulate(np.array(times, dtype=np.int64) - (times[0] if times else 0))
    info = {"mode": "pcap", "pcap": path, "flows": len(flow_index), "vni": vni, **counts}
    return PacketPlan(templates, np.arange(len(templates), dtype=np.int64),
                      np.zeros(len(templates), dtype=np.int64), pkt_flow, _positions_in_flow(pkt_flow),
                      offsets, info)


def _positions_in_flow(pkt_flow: np.ndarray) -> np.ndarray:
    """1-based position of each packet within its flow, in id order (0 for untagged)."""
    order = np.argsort(pkt_flow, kind="stable")
    sorted_flow = pkt_flow[order]
    group_start = np.flatnonzero(np.r_[True, sorted_flow[1:] != sorted_flow[:-1]]) if len(order) else order
    starts = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    seq = np.empty(len(order), dtype=np.int64)
    seq[order] = np.arange(len(order)) - starts + 1
    return np.where(pkt_flow >= 0, seq, 0)
