"""What the parts of deft-trafficgen share: the program name, the error type, UDP socket setup."""

from __future__ import annotations

import socket
import struct
from typing import Any

from deft.runtime.errors import DeftError

PROG = "deft-trafficgen"
SOCKET_BUFFER_BYTES = 8 << 20
U16 = struct.Struct("!H")


class TrafficGenError(DeftError):
    """A run cannot proceed (bind failed, bad input file, receiver died); the message says why."""


def resolve_udp(option: str, host: str, port: int) -> tuple[int, Any]:
    """(address family, socket address) of HOST:PORT; TrafficGenError names the option."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except OSError as exc:
        raise TrafficGenError(f"{option} udp://{host}:{port}: cannot resolve: {exc.strerror or exc}") from None
    return family, addr


def set_buffer(sock: socket.socket, option: int, size: int) -> int:
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
