"""What one message between two processes costs here, by transport: the floor under every hop.

    .venv/bin/python benchmarks/hop_cost.py [--messages 2000] [--gaps 0,2]

Two processes play ping-pong with a 300-byte message, one at a time, over each
transport the runtime uses or could use: ZeroMQ DEALER/ROUTER over TCP (2PC,
fabric, copies between nodes) and over IPC, a plain UDP datagram on loopback
(the ingress and egress), and a FIFO doorbell (the wake-up of the shared-memory
ring path inside a node; the data itself is a memory copy). With ``--gaps`` the
sender sleeps that many milliseconds between round trips, as at low load (caches
and idle CPUs go cold); 0 is back to back. Printed per transport and gap: the
round trip's p50, and the CPU time of both processes (every thread: ZeroMQ's
I/O threads included) per message, i.e. per one-way hop.

A replicated packet at low load crosses about 3.5 ZeroMQ hops (fabric to a
remote primary, a copy to a remote secondary, the Prepare, the Vote) besides
its UDP in and out and its process wake-ups; this prints what each costs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path

PAYLOAD = b"x" * 300
WARMUP = 100


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Zmq:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def server(self):
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(self.endpoint)
        return lambda: sock.send_multipart(sock.recv_multipart())

    def client(self):
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(self.endpoint)

        def ping() -> None:
            sock.send(PAYLOAD)
            sock.recv()
        return ping


class Udp:
    def __init__(self, port: int):
        self.port = port

    def server(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", self.port))

        def pong() -> None:
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)
        return pong

    def client(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", self.port))

        def ping() -> None:
            sock.send(PAYLOAD)
            sock.recv(2048)
        return ping


class Fifo:
    """Two FIFOs, one byte each way: a doorbell rung and the other side woken from ``select``."""

    def __init__(self, directory: str):
        self.there, self.back = Path(directory, "there"), Path(directory, "back")
        for path in (self.there, self.back):
            os.mkfifo(path)

    def _ends(self, rd: Path, wr: Path):
        r = os.open(rd, os.O_RDWR | os.O_NONBLOCK)
        w = os.open(wr, os.O_RDWR | os.O_NONBLOCK)
        import select

        def wait_read() -> None:
            select.select([r], [], [])
            os.read(r, 64)
        return w, wait_read

    def server(self):
        w, wait_read = self._ends(self.there, self.back)

        def pong() -> None:
            wait_read()
            os.write(w, b"\1")
        return pong

    def client(self):
        w, wait_read = self._ends(self.back, self.there)

        def ping() -> None:
            os.write(w, b"\1")
            wait_read()
        return ping


def serve(transport, n: int, ready, result) -> None:
    pong = transport.server()
    ready.set()
    for i in range(n):
        if i == WARMUP:
            start = cpu_s()
        pong()
    result.put(cpu_s() - start)


def measure(transport, n: int, gap_s: float) -> tuple[float, float]:
    """(round trip p50 in us, CPU us per one-way message, both processes)."""
    ready, result = mp.Event(), mp.Queue()
    server = mp.Process(target=serve, args=(transport, n, ready, result))
    server.start()
    try:
        ready.wait(10)
        ping = transport.client()
        time.sleep(0.2)   # connected
        rtts = []
        for i in range(n):
            if i == WARMUP:
                start = cpu_s()
            t0 = time.perf_counter_ns()
            ping()
            rtts.append(time.perf_counter_ns() - t0)
            if gap_s:
                time.sleep(gap_s)
        mine = cpu_s() - start
        theirs = result.get(timeout=30)
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
    measured = rtts[WARMUP:]
    measured.sort()
    return measured[len(measured) // 2] / 1000, (mine + theirs) / (2 * (n - WARMUP)) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hop_cost.py")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--gaps", default="0,2", help="milliseconds between round trips")
    args = ap.parse_args(argv)
    mp.set_start_method("fork")
    with tempfile.TemporaryDirectory() as tmp:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        transports = {
            "zmq tcp": lambda: Zmq(f"tcp://127.0.0.1:{port}"),
            "zmq ipc": lambda: Zmq(f"ipc://{tmp}/hop.sock"),
            "udp": lambda: Udp(port),
            "fifo bell": lambda: Fifo(tempfile.mkdtemp(dir=tmp)),
        }
        print(f"{'transport':<10} {'gap ms':>6} {'rtt p50 us':>10} {'CPU us/msg':>10}")
        for gap in [float(g) for g in args.gaps.split(",")]:
            for name, make in transports.items():
                rtt, cpu = measure(make(), args.messages, gap / 1000)
                print(f"{name:<10} {gap:>6g} {rtt:>10.0f} {cpu:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
