"""A connected UDP sender never loses a datagram to an earlier datagram's ICMP error (issue 10).

Linux reports an ICMP port unreachable drawn by one datagram on the next
``send()`` of a connected socket (ECONNREFUSED, nothing sent). The egress, the
traffic generator and the reference NAT send that datagram again and count the
event as ``icmp_refused``, apart from real errors.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_UDP
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.dataplane.udp_send import RETRIES, send_again
from deft.runtime.procs.egress import UdpSink


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(n: int, first: int = 0) -> np.ndarray:
    grams = [vxlan_wrap(build_frame(0x0A000001, 0x0A000002, IPPROTO_UDP, 1000 + first + i, 53, b"p"), 7)
             for i in range(n)]
    recs, drops = records_from_datagrams(grams)
    assert not drops.any()
    return recs


def drain(sock: socket.socket, want: int, timeout: float = 2.0) -> list[bytes]:
    got: list[bytes] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            pass
    return got


def test_egress_loses_nothing_once_a_listener_appears():
    port = free_udp_port()
    sink = UdpSink(f"udp://127.0.0.1:{port}")
    try:
        refused_total = 0
        for k in range(5):  # nobody listens: each datagram draws an ICMP port unreachable
            _, _, refused = sink.send(records(4, first=10 * k))
            refused_total += refused
            time.sleep(0.01)  # let the ICMP come back before the next burst
        assert refused_total >= 1  # the pending errors were seen, and stepped over
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            rx.bind(("127.0.0.1", port))
            burst = records(50, first=100)
            sent, errors, refused = sink.send(burst)
            assert (sent, errors) == (50, 0)
            got = drain(rx, 50)
        ports = sorted(int.from_bytes(d[8 + 34: 8 + 36], "big") for d in got)
        assert ports == list(range(1100, 1150))  # every datagram of the burst arrived, the first too
    finally:
        sink.close()


def test_the_pending_error_would_have_cost_the_next_datagram():
    """The kernel behaviour the fix rests on: without a resend, the next datagram is lost."""
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(("127.0.0.1", port))
        tx.send(b"draws an ICMP")
        time.sleep(0.02)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            rx.bind(("127.0.0.1", port))
            try:
                tx.send(b"first")
                raised = False
            except ConnectionRefusedError:
                raised = True
                assert send_again(tx.send, b"first")
            tx.send(b"second")
            got = drain(rx, 2)
    assert raised
    assert got == [b"first", b"second"]


class ScriptedSend:
    def __init__(self, errors: list[BaseException | None]):
        self.errors = errors
        self.sent: list[object] = []

    def __call__(self, datagram: object) -> int:
        err = self.errors.pop(0) if self.errors else None
        if err is not None:
            raise err
        self.sent.append(datagram)
        return 1


def test_send_again_steps_over_refusals_up_to_the_limit():
    ok = ScriptedSend([ConnectionRefusedError(), None])
    assert send_again(ok, b"x") and ok.sent == [b"x"]
    stuck = ScriptedSend([ConnectionRefusedError()] * RETRIES)
    assert not send_again(stuck, b"x") and stuck.sent == []
    nobufs = ScriptedSend([OSError(105, "No buffer space available")])
    assert not send_again(nobufs, b"x")


def test_a_few_datagrams_leave_as_a_burst_of_columns_would():
    """Up to FEW records are joined from bytes, not staged as columns: the same datagrams (VNI, frame)."""
    from deft.runtime.procs import egress

    recs = records(egress.FEW + 2)
    recs["vni"] = [0, 1, 0xABCDEF, 0xFFFFFF, 7, 100][: len(recs)]
    sent = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        sink = UdpSink(f"udp://127.0.0.1:{rx.getsockname()[1]}")
        try:
            for few in (egress.FEW, 0):
                saved, egress.FEW = egress.FEW, few
                try:
                    for k in range(1, len(recs) + 1):
                        assert sink.send(recs[:k])[:2] == (k, 0)
                        sent.setdefault(k, []).append(drain(rx, k))
                finally:
                    egress.FEW = saved
        finally:
            sink.close()
    for k, (few, columns) in sent.items():
        assert few == columns and len(few) == k
        assert [int.from_bytes(d[4:7], "big") for d in few] == recs["vni"][:k].tolist()
