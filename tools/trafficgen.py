"""deft-trafficgen: send tagged VXLAN traffic, receive it back, report loss, order and latency.

SYNOPSIS
    deft-trafficgen --to udp://HOST:PORT --listen udp://HOST:PORT
                    [--flows N] [--rate PPS] [--packets N] [--duration S]
                    [--size BYTES] [--tcp-ratio R] [--vni VNI] [--seed N]
                    [--pcap FILE [--pcap-timing]] [--node tcp://HOST:PORT]
                    [--drain-ms MS] [--json FILE] [--quiet]

DESCRIPTION
    Sends VXLAN (RFC 7348) datagrams carrying Ethernet + IPv4 + UDP/TCP frames
    to --to, receives whatever comes back on --listen in a separate process,
    and matches the two by a 20-byte trailer at the end of every packet's
    payload (magic, packet id, send time; see ``deft.tools.trailer``). NFs
    rewrite headers, never payloads, so matching survives a NAT in between.

    Synthetic traffic (the default): --flows distinct 5-tuples (10.0.0.0/8 ->
    198.51.100.0/24), a --tcp-ratio share of them TCP. A TCP flow opens with a
    handshake (SYN, SYN-ACK from the server side, ACK), carries ACK|PSH data
    and ends with FIN|ACK when its packets run out; a UDP flow is just data.
    Every packet, handshake included, carries a payload ending in the trailer
    (data on a SYN is legal, as in TCP Fast Open), so every packet is matched.
    Packets go round-robin over the flows, in a seeded random order within
    each round, so flows interleave but each flow's packets leave in order.

    All packets are built before the clock starts: one template per flow and
    packet kind with correct checksums. Per packet the sender only writes the
    trailer (and the TCP sequence number) and patches the L4 checksum
    incrementally (one's-complement arithmetic, see ``checksum_delta``).
    Pacing sends small bursts against a monotonic schedule; it never sleeps
    per packet. --rate 0 sends as fast as possible.

    The report: sent, received, lost, duplicated, reordered (per flow: a
    packet arriving after one with a higher per-flow sequence number of the
    same flow; flows are bidirectional 5-tuples), foreign (datagrams without a
    valid trailer, or with a trailer this run did not send), NF drop counters
    of --node (before/after difference), offered / achieved send / receive
    rates, latency percentiles, and a 100 ms timeline. Loss does not change
    the exit status: it is in the report.

OPTIONS
    --to udp://HOST:PORT      where to send (a DEFT ingress, a reference NAT, or --listen itself)
    --listen udp://HOST:PORT  where the traffic comes back; --to equal to --listen is the
                              loopback check: the harness ceiling with nothing in between
    --flows N                 distinct flows (default 100)
    --rate PPS                packets per second, 0 = as fast as possible (default 10000)
    --packets N               packets to send (default: rate x duration, else 10000)
    --duration S              stop sending after S seconds (default: when the packets are sent)
    --size BYTES              inner Ethernet frame size, 62..1518 (74 with TCP) (default 128)
    --tcp-ratio R             share of TCP flows, 0..1 (default 0.5)
    --vni VNI                 VXLAN network identifier (default 100)
    --seed N                  seeds addresses, ports, ISNs and the interleaving (default 1)
    --pcap FILE               replay the Ethernet frames of a classic pcap file instead:
                              IPv4 UDP/TCP packets get the trailer appended (IPv4 total
                              length, UDP length and checksums fixed); other IPv4 packets
                              (ICMP, fragments) are sent unchanged and counted as untagged
                              (they come back as foreign); non-IPv4 frames are skipped and
                              counted. --packets limits the count; the file is not looped.
    --pcap-timing             with --pcap: keep the file's own inter-packet gaps (--rate is
                              then ignored); without it --rate applies, 0 = as fast as possible.
                              --flows, --size, --tcp-ratio and --seed do not apply to a replay.
    --node tcp://HOST:PORT    a deft-node control address: report its drop counters' change
    --drain-ms MS             after the last send, wait for MS of silence (default 500)
    --json FILE               also write the report as JSON
    --quiet                   no human-readable report, no progress line

    A progress line goes to stderr when stderr is a terminal.

EXIT STATUS
    0 the run completed (whatever the loss); 1 a runtime failure (cannot bind,
    unreadable pcap, receiver died); 2 bad arguments.

EXAMPLE
    deft-trafficgen --to udp://127.0.0.1:4790 --listen udp://127.0.0.1:4790 --rate 50000 --packets 100000
    deft-trafficgen --to udp://127.0.0.1:4789 --listen udp://127.0.0.1:4790 --flows 500 \\
                    --rate 20000 --duration 10 --node tcp://127.0.0.1:7101 --json report.json

PYTHON
    report = run(["--to", url, "--listen", url, "--packets", "2000"])   # or run(parse_args(...))

    plan = build_synthetic_plan(make_flows(50, 0.5, seed=1), packets=2000, frame_size=128, vni=100)
    with TrafficSender(plan, ("127.0.0.1", 4789)) as sender:
        log = sender.send(rate=20000)           # SendLog: send time per packet id

    ``analyze(plan.pkt_flow, plan.pkt_flow_seq, log, received)`` is the pure
    analysis behind the report. The receiver is a spawned process, which
    imports the caller's main module: a script calling run() needs the usual
    ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import multiprocessing
import random
import re
import select
import signal
import socket
import struct
import sys
import time
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
from deft.runtime.errors import DeftError
from deft.tools.pcap import LINKTYPE_ETHERNET, PcapReader
from deft.tools.progress import ProgressLine
from deft.tools.trailer import TRAILER, TRAILER_LEN, TRAILER_MAGIC, make_trailer

PROG = "deft-trafficgen"
IPV4_HLEN = 20
UDP_HLEN = 8
TCP_HLEN = 20
MIN_UDP_FRAME = ETH_HLEN + IPV4_HLEN + UDP_HLEN + TRAILER_LEN    # 62
MIN_TCP_FRAME = ETH_HLEN + IPV4_HLEN + TCP_HLEN + TRAILER_LEN    # 74
# Shortest datagram that can hold a tagged packet; shorter ones are foreign.
MIN_TAGGED_DATAGRAM = VXLAN_HLEN + MIN_UDP_FRAME
SOCKET_BUFFER_BYTES = 8 << 20
MAX_BURST = 64             # packets per burst; bounds how far the sender runs ahead of the schedule
BIN_NS = 100_000_000       # timeline bin
STATUS_REQUEST = {"cmd": "status"}
HUMAN_TIMELINE_MAX_BINS = 60

# The packet kinds of a TCP flow, in template order, and their flags
SYN, SYN_ACK, ACK, DATA, FIN = range(5)
TCP_KIND_FLAGS = (TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK)

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class TrafficGenError(DeftError):
    """A run cannot proceed (bind failed, bad input file, receiver died); the message says why."""


# ---------------------------------------------------------------------------------------------
# Flows and packet plans


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
    end = ip + _U16.unpack_from(buf, ip + 2)[0]
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


def _isns(flow: Flow) -> tuple[int, int]:
    """Client and server initial sequence numbers, derived from the 5-tuple (reproducible)."""
    rng = random.Random(hash((flow.src_ip, flow.dst_ip, flow.sport, flow.dport)) & 0xFFFFFFFF)
    return rng.getrandbits(32), rng.getrandbits(32)


def _interleave(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flow, 1-based per-flow seq) per send position: round-robin, shuffled within each round.

    Sort key = round + a random fraction: rounds stay in order (so each flow's
    packets stay in order) while the flows' order varies from round to round.
    """
    total = int(counts.sum())
    flow = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    seq = np.arange(total, dtype=np.int64) - np.repeat(starts, counts) + 1
    key = (seq - 1) + np.random.default_rng(seed).random(total)
    order = np.argsort(key, kind="stable")
    return flow[order], seq[order]


def build_synthetic_plan(flows: Sequence[Flow], packets: int, frame_size: int, vni: int,
                         seed: int = 1) -> PacketPlan:
    """Plan ``packets`` packets over ``flows``, spread evenly (the first flows get the remainder)."""
    n_flows = len(flows)
    counts = np.full(n_flows, packets // n_flows, dtype=np.int64)
    counts[: packets % n_flows] += 1
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
    total = _U16.unpack_from(frame, ip + 2)[0]
    proto = frame[ip + 9]
    fragment = _U16.unpack_from(frame, ip + 6)[0] & 0x3FFF
    l4_len = total - ihl
    if fragment or proto not in (IPPROTO_UDP, IPPROTO_TCP):
        return None
    if proto == IPPROTO_UDP and l4_len < UDP_HLEN:
        return None
    if proto == IPPROTO_TCP and (l4_len < TCP_HLEN or (frame[ip + ihl + 12] >> 4) * 4 > l4_len):
        return None
    header = bytearray(frame[ip: ip + ihl])
    _U16.pack_into(header, 2, total + TRAILER_LEN)
    _U16.pack_into(header, 10, 0)
    _U16.pack_into(header, 10, internet_checksum(header))
    segment = bytearray(frame[ip + ihl: ip + total]) + make_trailer()
    if proto == IPPROTO_UDP:
        _U16.pack_into(segment, 4, len(segment))
    return bytes(frame[:ip]) + bytes(header) + bytes(segment)


def _ipv4_problem(frame: bytes) -> str | None:
    """Why a frame cannot be replayed (counted and skipped), or None."""
    if len(frame) < ETH_HLEN or _U16.unpack_from(frame, 12)[0] != ETHERTYPE_IPV4:
        return "skipped_non_ipv4"
    if len(frame) < ETH_HLEN + IPV4_HLEN or frame[ETH_HLEN] >> 4 != 4:
        return "skipped_malformed"
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    total = _U16.unpack_from(frame, ETH_HLEN + 2)[0]
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


# ---------------------------------------------------------------------------------------------
# Sending


def _set_buffer(sock: socket.socket, option: int, size: int) -> int:
    """Ask for a big socket buffer; the *FORCE variant lifts the sysctl cap when privileged."""
    force = {socket.SO_RCVBUF: getattr(socket, "SO_RCVBUFFORCE", None),
             socket.SO_SNDBUF: getattr(socket, "SO_SNDBUFFORCE", None)}[option]
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    return sock.getsockopt(socket.SOL_SOCKET, option)


class _Schedule:
    """When packet i is due (ns after the start) and how many are due at a given time."""

    def __init__(self, total: int, rate: float, offsets_ns: np.ndarray | None = None):
        self.total = total
        self.rate = rate
        self.offsets = offsets_ns.tolist() if offsets_ns is not None else None

    def due(self, elapsed_ns: int) -> int:
        if self.offsets is not None:
            return bisect.bisect_right(self.offsets, elapsed_ns)
        if self.rate <= 0:
            return self.total
        return min(self.total, int(elapsed_ns * self.rate // 1_000_000_000) + 1)

    def at(self, i: int) -> int:
        if self.offsets is not None:
            return self.offsets[i]
        return math.ceil(i * 1_000_000_000 / self.rate) if self.rate > 0 else 0


@dataclass
class SendLog:
    """What the sender did: send time per packet id (0 = not sent: failed or cut by the duration)."""
    send_ns: np.ndarray
    start_ns: int
    end_ns: int
    attempted: int
    send_errors: int
    sndbuf_bytes: int = 0


class TrafficSender:
    """Send a PacketPlan to one UDP address at a target rate.

    ``send(rate, duration_s)`` sends every packet of the plan in id order (or
    until the duration is over) and returns a SendLog; the per-packet work is
    two or three ``struct.pack_into`` calls, a checksum patch and ``send``.
    """

    def __init__(self, plan: PacketPlan, to: tuple[str, int], sndbuf: int = SOCKET_BUFFER_BYTES):
        self.plan = plan
        try:
            family, _, _, _, addr = socket.getaddrinfo(to[0], to[1], type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            raise TrafficGenError(f"--to udp://{to[0]}:{to[1]}: cannot resolve: {exc.strerror or exc}") from None
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sndbuf_bytes = _set_buffer(self._sock, socket.SO_SNDBUF, sndbuf)
            self._sock.connect(addr)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TrafficSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, rate: float = 0, duration_s: float | None = None, use_offsets: bool = False,
             progress: ProgressLine | None = None) -> SendLog:
        """Send the plan; rate 0 = as fast as possible; ``use_offsets`` = the plan's own timing."""
        plan = self.plan
        total = plan.count
        schedule = _Schedule(total, rate, plan.offsets_ns if use_offsets else None)
        send_ns = np.zeros(total, dtype=np.int64)
        log_view = memoryview(send_ns).cast("B").cast("q")  # memoryview stores are cheaper than numpy's
        now = time.monotonic_ns
        start = now()
        deadline = start + int(duration_s * 1e9) if duration_s else None
        sent = errors = 0
        while sent < total:
            t = now()
            if deadline is not None and t >= deadline:
                break
            due = schedule.due(t - start)
            if due > sent:
                end = min(due, sent + MAX_BURST)
                errors += self._send_burst(sent, end, log_view)
                sent = end
            else:
                wake = start + schedule.at(sent)
                if deadline is not None:
                    wake = min(wake, deadline)
                time.sleep(max(0, wake - t) / 1e9)
            if progress is not None and progress.due(t):
                elapsed = max(t - start, 1) / 1e9
                progress.update(f"{PROG}: sent {sent}/{total}  {sent / elapsed:,.0f} pps  {elapsed:.1f} s", t)
        return SendLog(send_ns, start, now(), sent, errors, self.sndbuf_bytes)

    def _send_burst(self, start: int, end: int, log_view: memoryview) -> int:
        """Send packets [start, end); return the number of failed sends. The hot loop."""
        templates = self.plan.templates
        tix = self.plan.pkt_template[start:end].tolist()
        seqs = self.plan.pkt_seqval[start:end].tolist()
        send = self._sock.send
        now = time.monotonic_ns
        pack_trailer = TRAILER.pack_into
        pack_u16 = _U16.pack_into
        pack_u32 = _U32.pack_into
        magic = TRAILER_MAGIC
        errors = 0
        pid = start
        for t, sq in zip(tix, seqs):
            buf, csum_off, trailer_off, base, align, seq_off = templates[t]
            ts = now()
            if trailer_off:
                pack_trailer(buf, trailer_off, magic, pid, ts)
                if seq_off:
                    pack_u32(buf, seq_off, sq)
                # 0xFFFF - residue is never 0, so a UDP checksum never reads as "none"; for TCP a
                # residue of 0 gives 0xFFFF where a full computation gives 0 (one's-complement -0
                # and +0: both verify)
                pack_u16(buf, csum_off, 0xFFFF - (base + (pid + ts) * align + sq) % 0xFFFF)
            try:
                send(buf)
            except OSError:  # ECONNREFUSED from an earlier ICMP, ENOBUFS: the packet is not sent
                errors += 1
                ts = 0
            log_view[pid] = ts
            pid += 1
        return errors


# ---------------------------------------------------------------------------------------------
# Receiving (a separate process, so that receiving does not compete with sending for the GIL)


@dataclass
class Received:
    """Tagged datagrams in arrival order (packet id, trailer send time, receive time) and counts."""
    ids: np.ndarray
    sent_ns: np.ndarray
    recv_ns: np.ndarray
    foreign: int = 0
    overflow: int = 0
    rcvbuf_bytes: int = 0


def _receiver_main(conn: Any, host: str, port: int, capacity: int, rcvbuf: int, drain_ms: float) -> None:
    """Receiver process: bind, report ready, record tagged datagrams until done + drain silence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except OSError as exc:
        conn.send(("error", f"--listen udp://{host}:{port}: cannot resolve: {exc.strerror or exc}"))
        conn.close()
        return
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            actual = _set_buffer(sock, socket.SO_RCVBUF, rcvbuf)
            sock.bind(addr)
        except OSError as exc:
            conn.send(("error", f"--listen udp://{host}:{port}: cannot bind: {exc.strerror or exc}"))
            return
        sock.setblocking(False)
        conn.send(("ready", sock.getsockname()[1], actual))
        result = _receive_loop(sock, conn, capacity, int(drain_ms * 1e6))
        ids, sent, recv, count, foreign, overflow = result
        try:
            conn.send(("result", count, foreign, overflow, actual))
            for column in (ids, sent, recv):
                conn.send_bytes(memoryview(column[:count]).cast("B"))
        except OSError:   # the parent stopped us or is gone: nobody wants the records
            pass
    finally:
        sock.close()
        conn.close()


def _receive_loop(sock: socket.socket, conn: Any, capacity: int, drain_ns: int) -> tuple:
    ids = np.zeros(capacity, dtype=np.uint64)
    sent = np.zeros(capacity, dtype=np.uint64)
    recv = np.zeros(capacity, dtype=np.uint64)
    ids_v, sent_v, recv_v = (memoryview(a).cast("B").cast("Q") for a in (ids, sent, recv))
    buf = bytearray(65536)
    recv_into = sock.recv_into
    unpack = TRAILER.unpack_from
    now = time.monotonic_ns
    magic_ok = TRAILER_MAGIC
    min_len = MIN_TAGGED_DATAGRAM
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)
    # A stream that never pauses (someone else's traffic) must not keep us forever.
    max_drain_ns = 10 * drain_ns + 5_000_000_000
    count = foreign = overflow = 0
    done_at = 0             # when the sender said it finished; 0 = still sending
    last_rx = now()
    control_check = last_rx
    while True:
        try:
            n = recv_into(buf)
        except BlockingIOError:
            t = now()
            if done_at:
                quiet = t - max(last_rx, done_at)
                if quiet >= drain_ns or t - done_at >= max_drain_ns:
                    break
                wait_ms = max(1, (drain_ns - quiet) // 1_000_000)
            else:
                wait_ms = 100
            poller.poll(wait_ms)
            done_at, stop = _check_control(conn, done_at)
            if stop:
                break
            continue
        t = now()
        last_rx = t
        if n >= min_len:
            magic, pid, ts = unpack(buf, n - 20)
            if magic == magic_ok:
                if count < capacity:
                    ids_v[count] = pid
                    sent_v[count] = ts
                    recv_v[count] = t
                    count += 1
                else:
                    overflow += 1
            else:
                foreign += 1
        else:
            foreign += 1
        # Under a never-ending stream the socket is never idle: look at the control pipe anyway.
        if t - control_check > 50_000_000:
            control_check = t
            done_at, stop = _check_control(conn, done_at)
            if stop or (done_at and t - done_at >= max_drain_ns):
                break
    return ids, sent, recv, count, foreign, overflow


def _check_control(conn: Any, done_at: int) -> tuple[int, bool]:
    """Read pending control messages: ("done",) starts the drain, ("stop",) or a closed pipe
    (the parent is gone) ends at once."""
    while conn.poll():
        try:
            message = conn.recv()
        except EOFError:
            return done_at, True
        if message[0] == "done" and not done_at:
            done_at = time.monotonic_ns()
        elif message[0] == "stop":
            return done_at, True
    return done_at, False


class ReceiverProcess:
    """The receiver as a spawned process; ``start()`` returns the bound port, ``finish()`` the records."""

    def __init__(self, host: str, port: int, capacity: int, drain_ms: float,
                 rcvbuf: int = SOCKET_BUFFER_BYTES):
        self.host, self.port, self.capacity, self.drain_ms = host, port, capacity, drain_ms
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_receiver_main, name="deft-trafficgen-receiver", daemon=True,
                                 args=(child, host, port, capacity, rcvbuf, drain_ms))
        self._child = child

    def start(self, timeout_s: float = 30.0) -> int:
        self._proc.start()
        self._child.close()
        message = self._expect(timeout_s, "start")
        if message[0] == "error":
            raise TrafficGenError(message[1])
        self.rcvbuf_bytes = message[2]
        return message[1]

    def finish(self) -> Received:
        """Tell the receiver the sender is done; wait for the drain and collect the records."""
        self._conn.send(("done",))
        timeout = 10 * self.drain_ms / 1000 + 30
        _, count, foreign, overflow, rcvbuf = self._expect(timeout, "finish")
        columns = [np.frombuffer(self._conn.recv_bytes(), dtype=np.uint64) for _ in range(3)]
        if any(len(c) != count for c in columns):
            raise TrafficGenError(f"receiver process sent {[len(c) for c in columns]} records, announced {count}")
        return Received(*columns, foreign=foreign, overflow=overflow, rcvbuf_bytes=rcvbuf)

    def _expect(self, timeout_s: float, what: str) -> tuple:
        if not self._conn.poll(timeout_s):
            raise TrafficGenError(f"receiver process did not answer ({what}) within {timeout_s:.0f} s")
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(2)
            raise TrafficGenError(
                f"receiver process died ({what}), exit code {self._proc.exitcode}; note that a script "
                "calling run() needs an `if __name__ == \"__main__\":` guard, as the receiver is a "
                "spawned process that imports the main module") from None

    def close(self) -> None:
        """Stop the process (politely, then by force), reap it, close the pipe. Safe to call twice."""
        if self._proc is not None and self._proc.pid is not None:
            if self._proc.is_alive():
                try:
                    self._conn.send(("stop",))
                except OSError:
                    pass
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
            self._proc.close()
            self._proc = None
        self._conn.close()
        self._child.close()

    def __enter__(self) -> ReceiverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Analysis: a pure function of what was sent and what was received


def analyze(plan_flow: np.ndarray, plan_flow_seq: np.ndarray, sent: SendLog, received: Received,
            datagram_len: np.ndarray | None = None, bin_ns: int = BIN_NS) -> dict[str, Any]:
    """The loss/order/latency part of the report.

    A received record counts when its id was sent tagged by this run and its
    trailer time equals the recorded send time; anything else (a stale packet
    of an earlier run, a corrupted trailer) counts as foreign. The first
    arrival of an id counts as received, later ones as duplicates. Reordered:
    among first arrivals, per flow, a packet whose per-flow sequence is lower
    than one already received of that flow.
    """
    send_ns = sent.send_ns
    tagged = (plan_flow >= 0) & (send_ns > 0)
    n_sent = int(tagged.sum())
    valid, ids = _valid_records(received, send_ns, tagged)
    first = np.sort(np.unique(ids, return_index=True)[1]) if len(ids) else np.zeros(0, dtype=np.int64)
    first_ids = ids[first]
    recv_ns = received.recv_ns[valid].astype(np.int64)[first]
    latency_ns = recv_ns - send_ns[first_ids]
    reordered, reordered_flows = _count_reordered(plan_flow[first_ids], plan_flow_seq[first_ids])
    lost_mask = tagged.copy()
    lost_mask[first_ids] = False
    report: dict[str, Any] = {
        "sent": n_sent,
        "untagged_sent": int(((plan_flow < 0) & (send_ns > 0)).sum()),
        "send_errors": sent.send_errors,
        "received": len(first_ids),
        "lost": n_sent - len(first_ids),
        "loss_ratio": (n_sent - len(first_ids)) / n_sent if n_sent else 0.0,
        "flows_with_loss": len(np.unique(plan_flow[lost_mask])),
        "duplicated": len(ids) - len(first_ids),
        "reordered": reordered,
        "reordered_flows": reordered_flows,
        "foreign": received.foreign + int((~valid).sum()),
        "receiver_overflow": received.overflow,
    }
    report.update(_rates(send_ns[tagged], recv_ns, sent, datagram_len, first_ids))
    report["latency_us"] = _latency_summary(latency_ns)
    report["timeline"] = _timeline(send_ns[tagged], recv_ns, latency_ns, sent.start_ns, bin_ns)
    return report


def _valid_records(received: Received, send_ns: np.ndarray, tagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of records that match a packet of this run, and their ids (int64, arrival order)."""
    raw = received.ids
    in_range = raw < np.uint64(len(send_ns))
    ids = np.where(in_range, raw, 0).astype(np.int64)
    valid = in_range & tagged[ids] & (send_ns[ids] == received.sent_ns.astype(np.int64))
    return valid, ids[valid]


def _count_reordered(flow: np.ndarray, seq: np.ndarray) -> tuple[int, int]:
    """(packets that arrived after a higher seq of their flow, flows with at least one), arrival order.

    Sorting stably by flow keeps arrival order within a flow; with key =
    flow * (max seq + 1) + seq a running maximum over the whole array never
    carries from one flow into the next (a later flow's keys are all larger).
    """
    if len(flow) == 0:
        return 0, 0
    order = np.argsort(flow, kind="stable")
    f = flow[order]
    key = f * (int(seq.max()) + 1) + seq[order]
    before = np.maximum.accumulate(key)
    late = np.zeros(len(key), dtype=bool)
    late[1:] = key[1:] < before[:-1]
    return int(late.sum()), len(np.unique(f[late]))


def _rates(send_ns: np.ndarray, recv_ns: np.ndarray, sent: SendLog, datagram_len: np.ndarray | None,
           first_ids: np.ndarray) -> dict[str, Any]:
    """Achieved send rate over the send window (first to last send); receive rate over first send
    to last arrival, so a late start of the receive stream cannot inflate it on short runs."""
    send_span = (int(send_ns.max()) - int(send_ns.min())) / 1e9 if len(send_ns) > 1 else 0.0
    recv_span = (int(recv_ns.max()) - int(send_ns.min())) / 1e9 if len(recv_ns) and len(send_ns) else 0.0
    out: dict[str, Any] = {
        "send_seconds": round((sent.end_ns - sent.start_ns) / 1e9, 6),
        "send_rate_pps": round((len(send_ns) - 1) / send_span, 1) if send_span else None,
        "receive_rate_pps": round(len(recv_ns) / recv_span, 1) if recv_span > 0 else None,
    }
    if datagram_len is not None and recv_span > 0:
        out["receive_mbps"] = round(float(datagram_len[first_ids].sum()) * 8 / recv_span / 1e6, 3)
    return out


def _latency_summary(latency_ns: np.ndarray) -> dict[str, float] | None:
    if len(latency_ns) == 0:
        return None
    p50, p90, p99 = np.percentile(latency_ns, [50, 90, 99]) / 1000
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "p99": round(float(p99), 1),
            "max": round(float(latency_ns.max()) / 1000, 1)}


def _timeline(send_ns: np.ndarray, recv_ns: np.ndarray, latency_ns: np.ndarray, start_ns: int,
              bin_ns: int) -> list[dict[str, Any]]:
    """Per bin after the start: packets sent, packets received (first arrivals), their p50 latency."""
    if len(send_ns) == 0:
        return []
    sent_bin = (send_ns - start_ns) // bin_ns
    recv_bin = np.maximum(recv_ns - start_ns, 0) // bin_ns
    n_bins = int(max(sent_bin.max(), recv_bin.max() if len(recv_bin) else 0)) + 1
    sent_count = np.bincount(sent_bin, minlength=n_bins)
    recv_count = np.bincount(recv_bin, minlength=n_bins)
    order = np.argsort(recv_bin, kind="stable")
    bounds = np.searchsorted(recv_bin[order], np.arange(n_bins + 1))
    by_bin = latency_ns[order]
    timeline = []
    for b in range(n_bins):
        chunk = by_bin[bounds[b]: bounds[b + 1]]
        p50 = round(float(np.median(chunk)) / 1000, 1) if len(chunk) else None
        timeline.append({"t_ms": b * bin_ns // 1_000_000, "sent": int(sent_count[b]),
                         "received": int(recv_count[b]), "p50_us": p50})
    return timeline


# ---------------------------------------------------------------------------------------------
# NF drop counters (deft-ctl status of --node)


# Counters of `deft-ctl status` (runtime/status.py) that count packets lost inside the node:
# ingress drops by parse reason and full stamping-unit rings, NF verdicts and overflowing
# pending buffers in the workers, failed egress sends. ingress.counters.dropped is left out:
# it is the sum of ingress.drops.*. When none of these paths is present (the status format
# changed), any integer whose path mentions "drop" is taken instead.
DROP_COUNTER_PATTERNS = (
    r"ingress\.drops\.\w+",
    r"ingress\.counters\.unit_ring_full",
    r"instances\[\d+\]\.counters\.(dropped_by_nf|pending_overflow)",
    r"egress\.counters\.send_errors",
)
_DROP_PATH = re.compile("|".join(f"(?:{p})" for p in DROP_COUNTER_PATTERNS))


def fetch_drop_counters(node: str, timeout_ms: int = 2000) -> tuple[dict[str, int] | None, str | None]:
    """Drop counters of a deft-node as {dotted path: value}, or (None, why not)."""
    try:
        from deft.tools.ctl import query  # optional: the traffic generator works without it
    except ImportError:
        return None, "deft.tools.ctl.query is not available"
    try:
        status = query(node, dict(STATUS_REQUEST), timeout_ms)
    except Exception as exc:  # noqa: BLE001  a failed status query must not fail the traffic run
        return None, f"status query to {node} failed: {type(exc).__name__}: {exc}"
    return drop_counters(status), None


def drop_counters(status: dict[str, Any]) -> dict[str, int]:
    """The loss counters of a status reply (see DROP_COUNTER_PATTERNS)."""
    leaves = _integer_leaves(status, "")
    known = {k: v for k, v in leaves.items() if _DROP_PATH.fullmatch(k)}
    return known or {k: v for k, v in leaves.items() if "drop" in k.lower()}


def _integer_leaves(tree: Any, path: str) -> dict[str, int]:
    """Every integer (not bool) in nested dicts and lists, keyed by its dotted path."""
    out: dict[str, int] = {}
    if isinstance(tree, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in tree.items())
    elif isinstance(tree, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(tree))
    else:
        return out
    for sub, value in items:
        if isinstance(value, (dict, list)):
            out.update(_integer_leaves(value, sub))
        elif isinstance(value, int) and not isinstance(value, bool):
            out[sub] = value
    return out


def drop_difference(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return {"total": sum(changed.values()), "counters": changed}


# ---------------------------------------------------------------------------------------------
# Command line


def parse_udp_url(text: str, option: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """``udp://HOST:PORT`` (HOST may be [IPv6]) -> (host, port); ValueError names the option."""
    usage = f"{option}: expected udp://HOST:PORT, got {text!r}"
    if not text.startswith("udp://"):
        raise ValueError(usage)
    rest = text[len("udp://"):]
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not host or not sep or not port_text.isdigit():
        raise ValueError(usage)
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise ValueError(f"{option}: port {port} out of range 1..65535 in {text!r}")
    return host, port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Send tagged VXLAN traffic and report loss, "
                                "order and latency of what comes back (see the module docstring).")
    p.add_argument("--to", required=True, metavar="udp://HOST:PORT", help="where to send")
    p.add_argument("--listen", required=True, metavar="udp://HOST:PORT", help="where traffic comes back")
    p.add_argument("--flows", type=int, default=100, metavar="N", help="distinct flows (default 100)")
    p.add_argument("--rate", type=float, default=10000, metavar="PPS",
                   help="packets/s, 0 = as fast as possible (default 10000)")
    p.add_argument("--packets", type=int, default=None, metavar="N",
                   help="packets to send (default: rate x duration, else 10000)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop sending after S seconds")
    p.add_argument("--size", type=int, default=128, metavar="BYTES",
                   help="inner Ethernet frame size (default 128)")
    p.add_argument("--tcp-ratio", type=float, default=0.5, metavar="R", help="share of TCP flows (default 0.5)")
    p.add_argument("--vni", type=int, default=100, help="VXLAN network identifier (default 100)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="seed of addresses, ports and order")
    p.add_argument("--pcap", metavar="FILE", help="replay a classic pcap file (Ethernet) instead")
    p.add_argument("--pcap-timing", action="store_true", help="replay at the file's own timing")
    p.add_argument("--node", metavar="tcp://HOST:PORT", help="deft-node control address for drop counters")
    p.add_argument("--drain-ms", type=float, default=500, metavar="MS",
                   help="silence to wait for after the last send (default 500)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no report on stdout, no progress line")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; exits with status 2 and a message naming the option on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _validate(args: argparse.Namespace) -> None:
    """Resolve URLs and packet counts into args; ValueError names the option at fault."""
    args.listen_addr = parse_udp_url(args.listen, "--listen", allow_port_zero=True)
    args.loopback = args.to == args.listen
    args.to_addr = parse_udp_url(args.to, "--to", allow_port_zero=args.loopback)
    if args.node is not None and "://" not in args.node:
        raise ValueError(f"--node: expected tcp://HOST:PORT, got {args.node!r}")
    checks = [
        (args.flows >= 1, f"--flows: must be at least 1, got {args.flows}"),
        (args.rate >= 0, f"--rate: must be >= 0, got {args.rate:g}"),
        (args.packets is None or args.packets >= 1, f"--packets: must be at least 1, got {args.packets}"),
        (args.duration is None or args.duration > 0, f"--duration: must be > 0, got {args.duration}"),
        (0 <= args.tcp_ratio <= 1, f"--tcp-ratio: must be in 0..1, got {args.tcp_ratio:g}"),
        (0 <= args.vni < 1 << 24, f"--vni: must be in 0..16777215, got {args.vni}"),
        (args.drain_ms >= 0, f"--drain-ms: must be >= 0, got {args.drain_ms:g}"),
        (not args.pcap_timing or args.pcap, "--pcap-timing: needs --pcap"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if args.pcap is None:
        _validate_synthetic(args)


def _validate_synthetic(args: argparse.Namespace) -> None:
    minimum = MIN_TCP_FRAME if args.tcp_ratio > 0 else MIN_UDP_FRAME
    if not minimum <= args.size <= MAX_FRAME:
        what = "Ethernet 14 + IPv4 20 + " + ("TCP 20" if minimum == MIN_TCP_FRAME else "UDP 8") + " + trailer 20"
        raise ValueError(f"--size: must be in {minimum}..{MAX_FRAME} ({what}), got {args.size}")
    if args.packets is None:
        if args.duration is None:
            args.packets = 10000
        elif args.rate > 0:
            args.packets = max(1, math.ceil(args.rate * args.duration))
        else:
            raise ValueError("--duration: with --rate 0 also give --packets (packets are built before sending)")


def run(args: argparse.Namespace | Sequence[str]) -> dict[str, Any]:
    """Run one measurement and return the report (also printed / written as the options say)."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args))
    plan = _build_plan(args)
    if plan.count == 0:
        raise TrafficGenError("nothing to send (the pcap file has no replayable frames)")
    progress = ProgressLine(sys.stderr, enabled=False if args.quiet else None)
    before = after = None
    drops_error = None
    if args.node:
        before, drops_error = fetch_drop_counters(args.node)
    host, port = args.listen_addr
    # Room for every packet plus a tenth duplicated; more is counted as receiver_overflow.
    capacity = plan.count + max(4096, plan.count // 10)
    with ReceiverProcess(host, port, capacity, args.drain_ms) as receiver:
        args.bound_port = bound_port = receiver.start()
        to = (host, bound_port) if args.loopback else args.to_addr
        with TrafficSender(plan, to) as sender:
            log = sender.send(args.rate, args.duration, use_offsets=args.pcap_timing, progress=progress)
        progress.update(f"{PROG}: sent {log.attempted}; draining {args.drain_ms:g} ms", force=True)
        received = receiver.finish()
    progress.close()
    if args.node and before is not None:
        after, drops_error = fetch_drop_counters(args.node)
    report = _assemble_report(args, plan, log, received, before, after, drops_error)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    if not args.quiet:
        print(format_report(report))
    return report


def _build_plan(args: argparse.Namespace) -> PacketPlan:
    if args.pcap:
        try:
            return build_pcap_plan(args.pcap, args.vni, args.packets)
        except OSError as exc:
            raise TrafficGenError(f"--pcap {args.pcap}: {exc.strerror or exc}") from None
    flows = make_flows(args.flows, args.tcp_ratio, args.seed)
    return build_synthetic_plan(flows, args.packets, args.size, args.vni, args.seed)


def _assemble_report(args: argparse.Namespace, plan: PacketPlan, log: SendLog, received: Received,
                     before: dict[str, int] | None, after: dict[str, int] | None,
                     drops_error: str | None) -> dict[str, Any]:
    listen = args.listen
    if args.listen_addr[1] == 0:            # show the port the receiver really bound
        listen = args.listen[: args.listen.rindex(":") + 1] + str(args.bound_port)
    report: dict[str, Any] = {"to": listen if args.loopback else args.to, "listen": listen,
                              "plan": plan.info, "planned_packets": plan.count}
    report["offered_rate_pps"] = None if (args.rate == 0 or args.pcap_timing) else args.rate
    report.update(analyze(plan.pkt_flow, plan.pkt_flow_seq, log, received, plan.datagram_lengths()))
    report["nf_drops"] = drop_difference(before, after) if (before is not None and after is not None) else None
    if args.node:
        report["nf_drops_error"] = drops_error
    report["socket_buffers"] = {"sndbuf": log.sndbuf_bytes, "rcvbuf": received.rcvbuf_bytes}
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a short human-readable text."""
    plan = r["plan"]
    if plan["mode"] == "pcap":
        what = f"pcap {plan['pcap']} ({plan['flows']} flows, {plan['untagged']} untagged, " \
               f"{plan['skipped_non_ipv4']} non-IPv4 skipped)"
    else:
        what = f"{plan['flows']} flows ({plan['tcp_flows']} tcp, {plan['udp_flows']} udp), " \
               f"{plan['frame_size']}-byte frames"
    offered = "max" if r["offered_rate_pps"] is None else f"{r['offered_rate_pps']:,.0f} pps"
    lat = r["latency_us"]
    lines = [
        f"{PROG}: {what}, vni {plan['vni']} -> {r['to']}, receiving on {r['listen']}",
        f"  sent        {r['sent']:>10,}   send errors {r['send_errors']}   untagged {r['untagged_sent']}",
        f"  received    {r['received']:>10,}   lost {r['lost']:,} ({100 * r['loss_ratio']:.3f}%, "
        f"{r['flows_with_loss']} flows)   duplicated {r['duplicated']:,}   "
        f"reordered {r['reordered']:,} in {r['reordered_flows']} flows   foreign {r['foreign']:,}",
        f"  nf drops    {_format_drops(r)}",
        f"  rate        offered {offered}   sent {_pps(r['send_rate_pps'])}   received "
        f"{_pps(r['receive_rate_pps'])}" + (f" ({r['receive_mbps']:.1f} Mbit/s)" if "receive_mbps" in r else ""),
        "  latency     " + ("none received" if lat is None else
                            f"p50 {lat['p50']:.0f} us   p90 {lat['p90']:.0f} us   "
                            f"p99 {lat['p99']:.0f} us   max {lat['max']:.0f} us"),
    ]
    if r["receiver_overflow"]:
        lines.append(f"  WARNING     receiver buffer overflow: {r['receiver_overflow']:,} records not kept")
    lines.extend(_format_timeline(r["timeline"]))
    return "\n".join(lines)


def _pps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} pps"


def _format_drops(r: dict[str, Any]) -> str:
    if r["nf_drops"] is not None:
        return f"{r['nf_drops']['total']:,}" + "".join(
            f"   {k} +{v}" for k, v in sorted(r["nf_drops"]["counters"].items()))
    return f"n/a ({r['nf_drops_error']})" if r.get("nf_drops_error") else "n/a (no --node)"


def _format_timeline(timeline: list[dict[str, Any]]) -> list[str]:
    if len(timeline) > HUMAN_TIMELINE_MAX_BINS:
        return [f"  timeline    {len(timeline)} bins of 100 ms (in the --json report)"]
    lines = ["  timeline    t (s)      sent  received   p50 (us)"]
    for b in timeline:
        p50 = "-" if b["p50_us"] is None else f"{b['p50_us']:.0f}"
        lines.append(f"              {b['t_ms'] / 1000:5.1f} {b['sent']:9,} {b['received']:9,} {p50:>10}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (TrafficGenError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
