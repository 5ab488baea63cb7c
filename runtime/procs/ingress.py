"""Ingress (the stamper manager): receive, parse, hash each packet to its stamping unit.

Sources (``[ingress] listen``):
  udp://HOST:PORT   VXLAN datagrams; a burst is read with non-blocking recv_into
                    into a staging block, then parsed as one numpy batch
  shm://NAME        a local ring of records holding only frame/frame_len/vni
                    (benchmarks: no system call per packet)
  pcap://PATH       a capture file replayed once, as fast as the units take it

A unit ring that is full drops the packets meant for it (counted as
``unit_ring_full``) before they are stamped, so no seq is ever skipped.
"""

from __future__ import annotations

import select
import socket
import time

import numpy as np

from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.dataplane.parse import DROP_REASONS, STAGE_WIDTH, parse_into, parse_records_into
from deft.runtime.dataplane.stamper import unit_of
from deft.runtime.params import split_host_port
from deft.runtime.ring import Doorbell, Ring
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

BURST = 256
COUNTERS = (["ready", "owner", "received", "accepted", "dropped", "unit_ring_full", "bursts"]
            + [f"drop_{r}" for r in DROP_REASONS])


class UdpSource:
    """VXLAN datagrams from a UDP socket.

    The supervisor binds the socket and hands it down (``socket_fd``), so the
    datagrams queued in the kernel outlive an ingress crash and its standby
    continues reading where the dead one stopped.
    """

    def __init__(self, url: str, rcvbuf: int, socket_fd: int | None = None):
        if socket_fd is not None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=socket_fd)
        else:
            host, port = split_host_port(url.partition("://")[2])
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.stage = np.zeros((BURST, STAGE_WIDTH), dtype=np.uint8)
        self.rows = [memoryview(self.stage[i]) for i in range(BURST)]
        self.lengths = np.zeros(BURST, dtype=np.int64)

    # A socket cannot push back: read on, and count what the unit rings cannot take.
    backpressure = False

    def read(self, out: np.ndarray, drops: np.ndarray, timeout_ms: int) -> tuple[int, int]:
        """(datagrams received, records parsed into out)."""
        recv_into = self.sock.recv_into
        lengths = self.lengths
        n = 0
        for row in self.rows:
            try:
                lengths[n] = recv_into(row)
            except BlockingIOError:
                break
            n += 1
        if n == 0:
            self.poller.poll(timeout_ms)
            return 0, 0
        return n, parse_into(self.stage, lengths[:n], out, time.monotonic_ns(), drops)

    def close(self) -> None:
        self.sock.close()


class ShmSource:
    # Records can wait in the input ring, so read only what the unit rings can take.
    backpressure = True

    def __init__(self, topo: Topology):
        self.ring = Ring.attach(topo.shm_input(), PACKET_DTYPE)
        self.bell = Doorbell.attach(topo.ingress_bell())

    def read(self, out: np.ndarray, drops: np.ndarray, timeout_ms: int) -> tuple[int, int]:
        view = self.ring.peek(len(out))
        if len(view) == 0:
            self.bell.wait(timeout_ms / 1000)
            return 0, 0
        k = parse_records_into(view, out, time.monotonic_ns(), drops)
        n = len(view)
        self.ring.release(n)
        return n, k

    def close(self) -> None:
        self.ring.close()
        self.bell.close()


class PcapSource:
    """Replays a capture once; each record is parsed like a VXLAN-less shm record."""

    backpressure = True

    def __init__(self, path: str):
        from deft.tools.pcap import read_pcap

        frames = [frame for _, frame in read_pcap(path)]
        self.records = np.zeros(len(frames), dtype=PACKET_DTYPE)
        for i, frame in enumerate(frames):
            m = min(len(frame), self.records.dtype.fields["frame"][0].shape[0])
            self.records["frame"][i, :m] = np.frombuffer(frame[:m], dtype=np.uint8)
            self.records["frame_len"][i] = min(len(frame), 65535)
        self.pos = 0

    def read(self, out: np.ndarray, drops: np.ndarray, timeout_ms: int) -> tuple[int, int]:
        if self.pos >= len(self.records):
            time.sleep(timeout_ms / 1000)
            return 0, 0
        chunk = self.records[self.pos: self.pos + len(out)]
        self.pos += len(chunk)
        return len(chunk), parse_records_into(chunk, out, time.monotonic_ns(), drops)

    def close(self) -> None:
        pass


def open_source(topo: Topology, socket_fd: int | None = None):
    listen = topo.config.ingress.listen
    scheme, _, rest = listen.partition("://")
    if scheme == "udp":
        return UdpSource(listen, topo.config.ingress.rcvbuf, socket_fd)
    if scheme == "shm":
        return ShmSource(topo)
    return PcapSource(rest)


def run(topo: Topology, index: int, stop, log, restarted: bool = False, socket_fd: int | None = None) -> None:
    units = list(topo.units)
    rings = [Ring.attach(topo.unit_ring(u), PACKET_DTYPE) for u in units]
    bells = [Doorbell.attach(topo.unit_bell(u)) for u in units]
    stats = CounterBlock.attach(topo.stats("ingress"))
    source = open_source(topo, socket_fd)
    out = np.zeros(BURST, dtype=PACKET_DTYPE)
    drops = np.zeros(len(DROP_REASONS), dtype=np.int64)
    values = stats.values
    i_received, i_accepted, i_dropped, i_full, i_bursts = (
        stats.index[c] for c in ("received", "accepted", "dropped", "unit_ring_full", "bursts"))
    i_drop0 = stats.index[f"drop_{DROP_REASONS[0]}"]
    log.info("ingress listening on %s for %d stamping unit(s)", topo.config.ingress.listen, len(units))
    stats.set("ready", 1)
    try:
        while not stop:
            if source.backpressure:
                room = min(r.free() for r in rings)
                if room == 0:
                    time.sleep(0.0001)
                    continue
                n, k = source.read(out[:room], drops, 100)
            else:
                n, k = source.read(out, drops, 100)
            if n == 0:
                continue
            values[i_received] += n
            values[i_accepted] += k
            values[i_bursts] += 1
            if n != k:
                values[i_dropped] += n - k
                values[i_drop0: i_drop0 + len(drops)] += drops
                drops[:] = 0
            if k == 0:
                continue
            batch = out[:k]
            if len(rings) == 1:
                pushed = rings[0].push_some(batch)
                bells[0].ring()
                values[i_full] += k - pushed
                continue
            which = unit_of(batch["key_hash"], len(rings))
            for u, ring in enumerate(rings):
                part = np.flatnonzero(which == u)
                if len(part):
                    pushed = ring.push_some(batch, part)
                    bells[u].ring()
                    values[i_full] += len(part) - pushed
    finally:
        stats.set("ready", 0)
        source.close()
        for r in rings:
            r.close()
        stats.close()
