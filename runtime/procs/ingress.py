"""Ingress sources (the io process reads them; see ``io.py``): a burst at a time, never waiting.

Sources (``[ingress] listen``):
  udp://HOST:PORT   VXLAN datagrams; a burst is read with non-blocking recv_into
                    into a staging block, then parsed as one numpy batch
  shm://NAME        a local ring of records holding only frame/frame_len/vni
                    (benchmarks: no system call per packet); its producer rings
                    a FIFO bell the io polls
  pcap://PATH       a capture file replayed once, as fast as the units take it

``read(out, drops)`` returns (datagrams taken, records parsed into ``out``)
and never blocks; ``fileno()`` is what the io polls for more (None: nothing).
"""

from __future__ import annotations

import socket
import time

import numpy as np

from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.dataplane.parse import STAGE_WIDTH, parse_into, parse_records_into
from deft.runtime.params import split_host_port
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.topology import Topology

BURST = 256


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
        self.stage = np.zeros((BURST, STAGE_WIDTH), dtype=np.uint8)
        self.rows = [memoryview(self.stage[i]) for i in range(BURST)]
        self.lengths = np.zeros(BURST, dtype=np.int64)

    # A socket cannot push back: read on, and count what the unit rings cannot take.
    backpressure = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, out: np.ndarray, drops: np.ndarray) -> tuple[int, int]:
        """(datagrams received, records parsed into out)."""
        recv_into = self.sock.recv_into
        lengths = self.lengths
        n = 0
        for row in self.rows[: len(out)]:
            try:
                lengths[n] = recv_into(row)
            except BlockingIOError:
                break
            n += 1
        if n == 0:
            return 0, 0
        return n, parse_into(self.stage, lengths[:n], out, time.monotonic_ns(), drops)

    def close(self) -> None:
        self.sock.close()


class ShmSource:
    # Records can wait in the input ring, so read only what the unit rings can take.
    backpressure = True

    def __init__(self, topo: Topology):
        self.ring = Ring.attach(topo.shm_input(), PACKET_DTYPE)
        self.bell = FdBell.attach(topo.ingress_bell())

    def fileno(self) -> int:
        return self.bell.fileno()

    def read(self, out: np.ndarray, drops: np.ndarray) -> tuple[int, int]:
        self.bell.drain()
        view = self.ring.peek(len(out))
        if len(view) == 0:
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
        from deft.runtime.dataplane.pcap import read_pcap

        frames = [frame for _, frame in read_pcap(path)]
        self.records = np.zeros(len(frames), dtype=PACKET_DTYPE)
        for i, frame in enumerate(frames):
            m = min(len(frame), self.records.dtype.fields["frame"][0].shape[0])
            self.records["frame"][i, :m] = np.frombuffer(frame[:m], dtype=np.uint8)
            self.records["frame_len"][i] = min(len(frame), 65535)
        self.pos = 0

    def fileno(self) -> None:
        return None

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.records)

    def read(self, out: np.ndarray, drops: np.ndarray) -> tuple[int, int]:
        if self.pos >= len(self.records):
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
