"""The reference NAT (benchmarks/reference_nat.py) as a subprocess: translation, checksums, drops."""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from deft.tools import trafficgen as tg

from .reference_checksums import ones_sum as ones_complement_sum

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_nat.py"
PUBLIC_IP = bytes([203, 0, 113, 1])
CLIENT, SERVER = 0x0A010203, 0xC6336407




def full_checksum(data: bytes) -> int:
    return ~ones_complement_sum(data) & 0xFFFF


class Nat:
    """A running reference NAT plus the test's egress socket."""

    def __init__(self, proc: subprocess.Popen, port: int, egress: socket.socket):
        self.proc, self.port, self.egress = proc, port, egress
        self.url = f"udp://127.0.0.1:{port}"
        self.ingress = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ingress.connect(("127.0.0.1", port))

    def send(self, datagram: bytes) -> None:
        self.ingress.send(datagram)

    def recv(self) -> bytes:
        return self.egress.recv(65536)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def nat():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as egress:
        egress.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        egress.bind(("127.0.0.1", 0))
        egress.settimeout(5)
        cmd = [sys.executable, str(SCRIPT), "--listen", "udp://127.0.0.1:0",
               "--send-to", f"udp://127.0.0.1:{egress.getsockname()[1]}",
               "--public-ip", "203.0.113.1", "--ports", "20000-20009"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                ready, _, _ = select.select([proc.stderr], [], [], 20)
                assert ready, "reference NAT did not start"
                line = proc.stderr.readline()
                assert "listening on udp://127.0.0.1:" in line, line
                port = int(line.split("udp://127.0.0.1:")[1].split(",")[0])
                running = Nat(proc, port, egress)
                try:
                    yield running
                finally:
                    running.ingress.close()
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)


def check_translated(out: bytes, sent: bytes) -> dict:
    """Assert a translation by the book and return the translated fields."""
    assert out[:8] == sent[:8]                                  # VXLAN header, VNI preserved
    frame, original = out[8:], sent[8:]
    ihl = (frame[14] & 0x0F) * 4
    l4 = 14 + ihl
    proto = frame[23]
    assert frame[26:30] == PUBLIC_IP
    assert frame[30:34] == original[30:34]                      # destination untouched
    assert frame[l4 + 2: l4 + 4] == original[l4 + 2: l4 + 4]    # destination port untouched
    csum_at = l4 + (6 if proto == IPPROTO_UDP else 16)
    unchanged = [(14, 24), (34, 14 + ihl), (l4 + 2, csum_at), (csum_at + 2, len(frame))]
    for a, b in unchanged:
        assert frame[a:b] == original[a:b], (a, b)
    header = bytearray(frame[14:l4])
    header[10:12] = b"\x00\x00"
    assert frame[24:26] == full_checksum(bytes(header)).to_bytes(2, "big")   # equals a fresh computation
    segment = bytearray(frame[l4:])
    stored = segment[csum_at - l4: csum_at - l4 + 2]
    segment[csum_at - l4: csum_at - l4 + 2] = b"\x00\x00"
    pseudo = frame[26:34] + bytes([0, proto]) + len(segment).to_bytes(2, "big")
    expected = full_checksum(pseudo + bytes(segment))
    if proto == IPPROTO_UDP and expected == 0:
        expected = 0xFFFF
    assert bytes(stored) == expected.to_bytes(2, "big")
    return {"sport": struct.unpack_from("!H", frame, l4)[0]}


def test_translates_udp_and_tcp_with_correct_checksums(nat):
    cases = [
        build_frame(CLIENT, SERVER, IPPROTO_UDP, 5000, 53, b"a question"),
        build_frame(CLIENT, SERVER, IPPROTO_TCP, 5001, 80, b"GET /", tcp_flags=0x18, tcp_seq=9, tcp_ack=7),
        build_frame(CLIENT + 1, SERVER, IPPROTO_UDP, 5000, 53, b"odd length!"),
        build_frame(CLIENT, SERVER, IPPROTO_UDP, 5000, 53, b"same flow again"),
    ]
    ports = []
    for i, frame in enumerate(cases):
        datagram = vxlan_wrap(frame, 1000 + i)
        nat.send(datagram)
        ports.append(check_translated(nat.recv(), datagram)["sport"])
    assert ports == [20000, 20001, 20002, 20000]     # one public port per flow, reused
    counters = nat.stop()
    assert counters["translated"] == 4 and counters["new_flows"] == 3


def test_many_random_flows_keep_checksums_exact(nat):
    # Random addresses and ports exercise every carry case of the incremental update.
    import random
    rng = random.Random(7)
    for _ in range(10):
        frame = build_frame(rng.getrandbits(32), rng.getrandbits(32), rng.choice([IPPROTO_UDP, IPPROTO_TCP]),
                            rng.randrange(1, 65536), rng.randrange(1, 65536), rng.randbytes(rng.randrange(0, 40)),
                            tcp_seq=rng.getrandbits(32), ident=rng.getrandbits(16))
        datagram = vxlan_wrap(frame, 5)
        nat.send(datagram)
        check_translated(nat.recv(), datagram)


def test_ip_options_and_udp_without_checksum(nat):
    plain = bytearray(build_frame(CLIENT, SERVER, IPPROTO_UDP, 6000, 53, b"no checksum"))
    plain[40:42] = b"\x00\x00"                                  # UDP checksum "none"
    nat.send(vxlan_wrap(bytes(plain), 1))
    out = nat.recv()
    assert out[8 + 26: 8 + 30] == PUBLIC_IP and out[8 + 40: 8 + 42] == b"\x00\x00"

    frame = build_frame(CLIENT, SERVER, IPPROTO_TCP, 6001, 443, b"hello", tcp_flags=0x02)
    header = bytearray(frame[14:34]) + b"\x01\x01\x01\x00"     # NOP NOP NOP EOL
    header[0] = 0x46
    struct.pack_into("!H", header, 2, len(frame) - 14 + 4)
    header[10:12] = b"\x00\x00"
    header[10:12] = full_checksum(bytes(header)).to_bytes(2, "big")
    with_options = vxlan_wrap(frame[:14] + bytes(header) + frame[34:], 2)
    nat.send(with_options)
    check_translated(nat.recv(), with_options)


def test_bad_input_is_dropped_and_counted(nat):
    good = build_frame(CLIENT, SERVER, IPPROTO_UDP, 7000, 53, b"ok")
    fragment = bytearray(good)
    fragment[20] |= 0x20
    short_ip = bytearray(good)
    struct.pack_into("!H", short_ip, 16, 200)                  # total length beyond the frame
    bad = [
        b"\x08",                                                # short datagram
        b"\x00" * 8 + good,                                     # VXLAN I flag missing
        vxlan_wrap(bytes(12) + b"\x86\xdd" + bytes(40), 1),     # IPv6
        vxlan_wrap(bytes(fragment), 1),
        vxlan_wrap(bytes(short_ip), 1),
        vxlan_wrap(build_frame(CLIENT, SERVER, IPPROTO_ICMP, 1, 1, b"ping"), 1),
        vxlan_wrap(good[:14 + 20] + b"\x00" * 4, 1)[:8 + 14 + 20 + 4],   # UDP header cut short
    ]
    for datagram in bad:
        nat.send(datagram)
    nat.send(vxlan_wrap(good, 1))
    assert nat.recv()[8 + 26: 8 + 30] == PUBLIC_IP               # still alive, and only this came out
    counters = nat.stop()
    assert counters["received"] == len(bad) + 1 and counters["translated"] == 1
    assert counters["not_ipv4"] == 1 and counters["fragment"] == 1 and counters["unsupported_proto"] == 1
    assert counters["malformed"] == 4


def check_translated_port(datagram: bytes) -> int:
    return struct.unpack_from("!H", datagram, 8 + 34)[0]


def test_port_range_exhaustion_drops_new_flows(nat):
    for i in [*range(12), 0]:          # the last one (a known flow) proves the others were handled
        nat.send(vxlan_wrap(build_frame(CLIENT, SERVER, IPPROTO_UDP, 8000 + i, 53, b"x"), 1))
    got = [check_translated_port(nat.recv()) for _ in range(11)]
    assert got == [*range(20000, 20010), 20000]
    counters = nat.stop()
    assert counters["no_port"] == 2 and counters["new_flows"] == 10


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trafficgen_through_a_nat_reports_no_loss():
    listen_port = _free_port()
    cmd = [sys.executable, str(SCRIPT), "--listen", "udp://127.0.0.1:0",
           "--send-to", f"udp://127.0.0.1:{listen_port}", "--public-ip", "203.0.113.1"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            ready, _, _ = select.select([proc.stderr], [], [], 20)
            assert ready
            port = int(proc.stderr.readline().split("udp://127.0.0.1:")[1].split(",")[0])
            report = tg.run(["--to", f"udp://127.0.0.1:{port}", "--listen", f"udp://127.0.0.1:{listen_port}",
                             "--flows", "20", "--rate", "2000", "--packets", "1000", "--drain-ms", "200",
                             "--quiet"])
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
    assert (report["sent"], report["received"], report["lost"]) == (1000, 1000, 0)
    assert report["reordered"] == report["duplicated"] == report["foreign"] == 0
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["translated"] == 1000
