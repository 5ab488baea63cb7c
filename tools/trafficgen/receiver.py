"""Receiving, in a separate process so that receiving does not compete with sending for the GIL.

The process binds --listen, records (packet id, trailer send time, receive
time, and the inner packet's source and destination endpoint as they arrive,
rewritten by the NFs) of every tagged datagram until the sender is done and
the drain silence has passed, and ships the records back through a pipe.
"""

from __future__ import annotations

import multiprocessing
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deft.tools.trafficgen.common import SOCKET_BUFFER_BYTES, TrafficGenError, resolve_udp, set_buffer
from deft.tools.trafficgen.plan import MIN_TAGGED_DATAGRAM
from deft.tools.trailer import TRAILER, TRAILER_MAGIC

INNER_IP = 8 + 14                   # VXLAN header, inner Ethernet header
INNER_PROTO = INNER_IP + 9
INNER_ADDRESSES = INNER_IP + 12
ENDPOINT_ADDRESSES = struct.Struct("!II")
ENDPOINT_PORTS = struct.Struct("!HH")


@dataclass
class Received:
    """Tagged datagrams in arrival order (packet id, trailer send time, receive time, endpoints) and counts.

    An endpoint is ``ipv4 << 16 | port`` of the inner TCP/UDP packet as received (0 for other protocols).
    """
    ids: np.ndarray
    sent_ns: np.ndarray
    recv_ns: np.ndarray
    src: np.ndarray | None = None
    dst: np.ndarray | None = None
    foreign: int = 0
    overflow: int = 0
    rcvbuf_bytes: int = 0


def _receiver_main(conn: Any, host: str, port: int, capacity: int, rcvbuf: int, drain_ms: float) -> None:
    """Receiver process: bind, report ready, record tagged datagrams until done + drain silence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    try:
        family, addr = resolve_udp("--listen", host, port)
    except TrafficGenError as exc:
        conn.send(("error", str(exc)))
        conn.close()
        return
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            actual = set_buffer(sock, socket.SO_RCVBUF, rcvbuf)
            sock.bind(addr)
        except OSError as exc:
            conn.send(("error", f"--listen udp://{host}:{port}: cannot bind: {exc.strerror or exc}"))
            return
        sock.setblocking(False)
        conn.send(("ready", sock.getsockname()[1], actual))
        result = _receive_loop(sock, conn, capacity, int(drain_ms * 1e6))
        ids, sent, recv, src, dst, count, foreign, overflow = result
        try:
            conn.send(("result", count, foreign, overflow, actual))
            for column in (ids, sent, recv, src, dst):
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
    src = np.zeros(capacity, dtype=np.uint64)
    dst = np.zeros(capacity, dtype=np.uint64)
    ids_v, sent_v, recv_v, src_v, dst_v = (memoryview(a).cast("B").cast("Q") for a in (ids, sent, recv, src, dst))
    addresses, ports = ENDPOINT_ADDRESSES.unpack_from, ENDPOINT_PORTS.unpack_from
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
                    if buf[INNER_PROTO] in (6, 17):  # VXLAN + Ethernet + IPv4: where a NAT left its mark
                        sa, da = addresses(buf, INNER_ADDRESSES)
                        sp, dp = ports(buf, INNER_IP + 4 * (buf[INNER_IP] & 15))
                        src_v[count], dst_v[count] = sa << 16 | sp, da << 16 | dp
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
    return ids, sent, recv, src, dst, count, foreign, overflow


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
        columns = [np.frombuffer(self._conn.recv_bytes(), dtype=np.uint64) for _ in range(5)]
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
