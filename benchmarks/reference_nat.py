"""reference_nat.py: the cheapest correct VXLAN source NAT in plain Python (the baseline DEFT is measured against).

SYNOPSIS
    python benchmarks/reference_nat.py --listen udp://HOST:PORT --send-to udp://HOST:PORT
                                       --public-ip A.B.C.D [--ports LO-HI] [--rcvbuf BYTES]

DESCRIPTION
    One process, one loop, one packet at a time: recv_into a preallocated
    buffer, check VXLAN / Ethernet / IPv4 / UDP|TCP with byte reads, look the
    inner 5-tuple up in a dict, rewrite the source address to --public-ip and
    the source port to the flow's public port, patch the IPv4 header checksum
    and the L4 checksum incrementally (RFC 1624: HC' = HC - (m' - m) in
    one's-complement arithmetic, i.e. modulo 0xFFFF; per-flow deltas are
    computed once, when the flow's mapping is made), and send the datagram on
    to --send-to with its VXLAN header (VNI) unchanged. No stamping, no rings,
    no batching, no replication: what a DEFT NF instance does minus every
    fault-tolerance mechanism.

    Every distinct 5-tuple (in either direction: there is no inbound reverse
    translation, since benchmark traffic only flows one way through the NAT)
    gets the next free public port from --ports; mappings never expire. When
    the range is used up, new flows are dropped and counted (no_port).

    Dropped and counted: datagrams that are not VXLAN with the I flag, inner
    frames that are not IPv4, broken IPv4 headers or lengths (malformed),
    fragments, protocols other than UDP and TCP (unsupported), L4 headers cut
    short (malformed). A UDP checksum of 0 ("none") stays 0. The result of an
    update equals a checksum computed from scratch (never 0xFFFF for IPv4/TCP,
    never 0 for UDP).

    Runs until SIGTERM or SIGINT, then prints its counters as one JSON line on
    stdout. Prints a "listening" line on stderr once the socket is bound.

OPTIONS
    --listen udp://HOST:PORT    where VXLAN traffic arrives (port 0: any free port, printed)
    --send-to udp://HOST:PORT   where translated traffic goes
    --public-ip A.B.C.D         the NAT's public source address
    --ports LO-HI               public source ports to allocate (default 1024-65535)
    --rcvbuf BYTES              receive socket buffer (default 8 MiB)

EXAMPLE
    python benchmarks/reference_nat.py --listen udp://127.0.0.1:4789 --send-to udp://127.0.0.1:4790 \\
        --public-ip 203.0.113.1 &
    deft-trafficgen --to udp://127.0.0.1:4789 --listen udp://127.0.0.1:4790 --rate 20000 --packets 100000
    kill %1
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
from collections.abc import Sequence

VXLAN_HLEN = 8
IP = VXLAN_HLEN + 14          # offset of the inner IPv4 header in the datagram
IPPROTO_TCP = 6
IPPROTO_UDP = 17
BUFFER_BYTES = 8 << 20

COUNTERS = ("received", "translated", "new_flows", "malformed", "not_ipv4", "fragment",
            "unsupported_proto", "no_port", "send_errors")


# Set by SIGTERM/SIGINT; the loop looks at it between packets, so counters are exact at exit.
STOP = [False]


def _stop(signum: int, frame: object) -> None:
    STOP[0] = True


class PortPool:
    """Public ports handed out in order; ``take()`` returns None when the range is used up."""

    def __init__(self, low: int, high: int):
        self.next = low
        self.high = high

    def take(self) -> int | None:
        if self.next > self.high:
            return None
        port = self.next
        self.next += 1
        return port


def new_mapping(key: tuple[int, bytes], public_ip: int, pool: PortPool) -> tuple[int, int, int] | None:
    """(public port, IPv4 checksum delta, L4 checksum delta) for a new flow, or None (no port).

    A delta is (new words - old words) mod 0xFFFF; the L4 one also covers the
    pseudo-header's source address.
    """
    port = pool.take()
    if port is None:
        return None
    src_ip, sport = struct.unpack_from("!I4xH", key[1])
    ip_delta = (public_ip - src_ip) % 0xFFFF
    return port, ip_delta, (ip_delta + port - sport) % 0xFFFF


def serve(sock_in: socket.socket, sock_out: socket.socket, public_ip: int, pool: PortPool,
          stop: list[bool] = STOP) -> dict[str, int]:
    """Translate until ``stop[0]``; return the counters. Everything hot is a local variable.

    The input socket is non-blocking: while packets keep coming, recv_into
    succeeds without a separate wait; only an empty socket costs a poll(),
    whose 100 ms timeout bounds how long a stop request waits.
    """
    sock_in.setblocking(False)
    idle_wait = select.poll()
    idle_wait.register(sock_in.fileno(), select.POLLIN)
    wait = idle_wait.poll
    buf = bytearray(65536)
    view = memoryview(buf)
    recv_into = sock_in.recv_into
    send = sock_out.send
    table: dict[tuple[int, bytes], tuple[int, int, int] | None] = {}
    get = table.get
    key_at = struct.Struct("!B2x12s").unpack_from     # (proto, src+dst+ports) when IHL is 5
    pack_ip = struct.Struct("!H4s").pack_into         # IPv4 checksum, then the source address
    pack_u16 = struct.Struct("!H").pack_into
    public = struct.pack("!I", public_ip)
    received = translated = new_flows = malformed = not_ipv4 = fragment = 0
    unsupported = no_port = send_errors = 0
    while not stop[0]:
        try:
            n = recv_into(buf)
        except BlockingIOError:
            wait(100)
            continue
        received += 1
        if n < IP + 20 or not buf[0] & 0x08:
            malformed += 1
            continue
        if buf[20] != 0x08 or buf[21] != 0x00:
            not_ipv4 += 1
            continue
        vihl = buf[22]
        ihl = (vihl & 0x0F) << 2
        total = buf[24] << 8 | buf[25]
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or IP + total > n:
            malformed += 1
            continue
        if buf[28] & 0x3F or buf[29]:       # MF flag or fragment offset
            fragment += 1
            continue
        proto = buf[31]
        l4 = IP + ihl
        if proto == IPPROTO_UDP:
            need, csum_off = 8, l4 + 6
        elif proto == IPPROTO_TCP:
            need, csum_off = 20, l4 + 16
        else:
            unsupported += 1
            continue
        if total - ihl < need:
            malformed += 1
            continue
        key = key_at(buf, 31) if ihl == 20 else (proto, bytes(view[34:42]) + bytes(view[l4:l4 + 4]))
        mapping = get(key)
        if mapping is None:
            if key in table:                 # known flow that found no port: keep dropping it
                no_port += 1
                continue
            mapping = table[key] = new_mapping(key, public_ip, pool)
            if mapping is None:
                no_port += 1
                continue
            new_flows += 1
        port, ip_delta, l4_delta = mapping
        pack_ip(buf, 32, ((buf[32] << 8 | buf[33]) - ip_delta) % 0xFFFF, public)
        pack_u16(buf, l4, port)
        csum = buf[csum_off] << 8 | buf[csum_off + 1]
        if csum or proto == IPPROTO_TCP:     # UDP checksum 0 means "none" and stays 0
            csum = (csum - l4_delta) % 0xFFFF
            pack_u16(buf, csum_off, csum or (0xFFFF if proto == IPPROTO_UDP else 0))
        try:
            send(view[:n])
        except ConnectionRefusedError:       # an earlier datagram's ICMP, reported here: send again
            try:
                send(view[:n])
            except OSError:
                send_errors += 1
                continue
        except OSError:                      # ENOBUFS
            send_errors += 1
            continue
        translated += 1
    values = (received, translated, new_flows, malformed, not_ipv4, fragment, unsupported, no_port, send_errors)
    return dict(zip(COUNTERS, values))


def parse_udp_url(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.removeprefix("udp://").rpartition(":")
    if not text.startswith("udp://") or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{option}: expected udp://HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reference_nat.py", description="Plain-Python VXLAN source NAT (baseline).")
    p.add_argument("--listen", required=True, type=lambda s: parse_udp_url(s, "--listen"))
    p.add_argument("--send-to", required=True, type=lambda s: parse_udp_url(s, "--send-to"))
    p.add_argument("--public-ip", required=True)
    p.add_argument("--ports", default="1024-65535")
    p.add_argument("--rcvbuf", type=int, default=BUFFER_BYTES)
    args = p.parse_args(argv)
    try:
        args.public_ip_int = struct.unpack("!I", socket.inet_aton(args.public_ip))[0]
    except OSError:
        p.error(f"--public-ip: expected an IPv4 address, got {args.public_ip!r}")
    low, _, high = args.ports.partition("-")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535):
        p.error(f"--ports: expected LO-HI within 1-65535, got {args.ports!r}")
    args.port_range = (int(low), int(high))
    return args


def _big_buffer(sock: socket.socket, option: int, force: int | None, size: int) -> None:
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)   # beyond rmem_max when privileged
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def open_sockets(args: argparse.Namespace) -> tuple[socket.socket, socket.socket]:
    family_in = socket.getaddrinfo(*args.listen, type=socket.SOCK_DGRAM)[0]
    family_out = socket.getaddrinfo(*args.send_to, type=socket.SOCK_DGRAM)[0]
    sock_in = socket.socket(family_in[0], socket.SOCK_DGRAM)
    sock_out = socket.socket(family_out[0], socket.SOCK_DGRAM)
    try:
        _big_buffer(sock_in, socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None), args.rcvbuf)
        _big_buffer(sock_out, socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None), args.rcvbuf)
        sock_in.bind(family_in[4])
        sock_out.connect(family_out[4])
    except BaseException:
        sock_in.close()
        sock_out.close()
        raise
    return sock_in, sock_out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        sock_in, sock_out = open_sockets(args)
    except OSError as exc:
        print(f"reference_nat.py: error: {exc}", file=sys.stderr)
        return 1
    with sock_in, sock_out:
        host, port = sock_in.getsockname()[:2]
        print(f"reference_nat.py: listening on udp://{host}:{port}, sending to "
              f"udp://{args.send_to[0]}:{args.send_to[1]}, public ip {args.public_ip}", file=sys.stderr, flush=True)
        counters = serve(sock_in, sock_out, args.public_ip_int, PortPool(*args.port_range))
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
