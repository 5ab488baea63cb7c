"""Egress sinks (the io process drains the workers' egress rings into one; see ``io.py``).

udp://HOST:PORT  each packet leaves as a VXLAN datagram with its own VNI; the
                 headers of a burst are written as columns of a staging block,
                 then one send per packet (connected socket; an earlier
                 datagram's ICMP error reported on a later send costs
                 nothing: that datagram is sent again, see udp_send.py)
shm://NAME       records are pushed to a local ring (benchmarks)
"""

from __future__ import annotations

import socket
import time

import numpy as np

from deft.runtime.dataplane.packet import FEW, HEADER_SIZE, MAX_FRAME, PACKET_DTYPE, RECORD_SIZE, raw_records
from deft.runtime.dataplane.udp_send import send_again
from deft.runtime.params import split_host_port
from deft.runtime.ring import Ring
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

BURST = 256
VXLAN_HLEN = 8
VXLAN_FLAGS = b"\x08\0\0\0"   # I flag, reserved; the VNI and a reserved byte follow
LATENCY_WINDOW = 4096  # node-internal latency (ingress receive -> egress send) of the last packets


class LatencyWindow:
    """The last LATENCY_WINDOW ingress-to-egress delays, summarised for status every 100 ms."""

    def __init__(self) -> None:
        self.samples = np.zeros(LATENCY_WINDOW, dtype=np.int64)
        self.n = 0
        self.next_publish = 0

    def add(self, ts_ns: np.ndarray, now_ns: int) -> None:
        k = min(len(ts_ns), LATENCY_WINDOW)
        pos = (self.n + np.arange(k)) % LATENCY_WINDOW
        self.samples[pos] = now_ns - ts_ns[-k:].astype(np.int64)
        self.n += k

    def publish(self, stats: CounterBlock, now_ns: int) -> None:
        if now_ns < self.next_publish or self.n == 0:
            return
        self.next_publish = now_ns + 100_000_000
        window = self.samples[: min(self.n, LATENCY_WINDOW)]
        p50, p99 = np.percentile(window, [50, 99])
        stats.set("node_latency_p50_us", int(p50 // 1000))
        stats.set("node_latency_p99_us", int(p99 // 1000))


class UdpSink:
    def __init__(self, url: str):
        host, port = split_host_port(url.partition("://")[2])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.connect((host, port))
        width = VXLAN_HLEN + MAX_FRAME
        self.stage = np.zeros((BURST, width), dtype=np.uint8)
        self.stage[:, 0] = 0x08  # VXLAN I flag
        self.rows = [memoryview(self.stage[i]) for i in range(BURST)]

    def send(self, records: np.ndarray, ring: Ring | None = None) -> tuple[int, int, int]:
        """Send a burst; return (sent, send errors, earlier ICMP errors stepped over).

        With ``ring`` (the burst is its ``peek``), each datagram is released from the ring as soon
        as it is sent: the ring's head is what the node has sent (workers commit on it), and a
        crash here repeats at most one datagram.
        """
        n = len(records)
        lengths = records["frame_len"].tolist()
        raw = raw_records(records) if n <= FEW else None
        if raw is not None:   # a few datagrams (a quiet worker's batch): joined from bytes, no staging
            datagrams = [VXLAN_FLAGS + (vni & 0xFFFFFF).to_bytes(3, "big") + b"\0"
                         + raw[i * RECORD_SIZE + HEADER_SIZE: i * RECORD_SIZE + HEADER_SIZE + length]
                         for i, (vni, length) in enumerate(zip(records["vni"].tolist(), lengths))]
        else:
            st = self.stage
            vni = records["vni"]
            st[:n, 4] = (vni >> 16) & 0xFF
            st[:n, 5] = (vni >> 8) & 0xFF
            st[:n, 6] = vni & 0xFF
            width = max(lengths)
            st[:n, VXLAN_HLEN: VXLAN_HLEN + width] = records["frame"][:, :width]
            datagrams = [row[: VXLAN_HLEN + length] for row, length in zip(self.rows, lengths)]
        send = self.sock.send
        errors = refused = 0
        release = ring.release if ring is not None else _no_release
        for datagram in datagrams:
            try:
                send(datagram)
            except ConnectionRefusedError:  # an earlier datagram's ICMP: this one was not sent yet
                refused += 1
                if not send_again(send, datagram):
                    errors += 1
            except OSError:
                errors += 1
            release(1)
        return n - errors, errors, refused

    def close(self) -> None:
        self.sock.close()


def _no_release(n: int) -> None:
    pass


class ShmSink:
    """Local output ring: waits for the reader (up to a second) rather than dropping."""

    def __init__(self, topo: Topology):
        self.ring = Ring.attach(topo.shm_output(), PACKET_DTYPE)

    def send(self, records: np.ndarray, ring: Ring | None = None) -> tuple[int, int, int]:
        pushed = self.ring.push_some(records)
        deadline = time.monotonic() + 1.0
        while pushed < len(records) and time.monotonic() < deadline:
            time.sleep(0.0001)
            pushed += self.ring.push_some(records[pushed:])
        if ring is not None:
            ring.release(len(records))
        return pushed, len(records) - pushed, 0

    def close(self) -> None:
        self.ring.close()


def send_ring(sink: UdpSink, ring: Ring) -> tuple[int, int, int]:
    """Send all ``ring`` holds, a burst at a time, each datagram released from it as it leaves (a
    worker sending its own output; its supervisor after it died); (sent, send errors, ICMP refused)."""
    sent = errors = refused = 0
    while len(ring):
        s, e, r = sink.send(ring.peek(BURST), ring)
        sent, errors, refused = sent + s, errors + e, refused + r
    return sent, errors, refused


def open_sink(topo: Topology):
    url = topo.config.egress.send_to
    return UdpSink(url) if url.startswith("udp://") else ShmSink(topo)
