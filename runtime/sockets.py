"""The one place ZeroMQ sockets are made, so options (and later CURVE) live together."""

from __future__ import annotations

import zmq


def make_socket(ctx: zmq.Context, kind: int, *, bind: str | None = None, connect: str | None = None,
                hwm: int = 10_000) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0  # an abandoned socket must never hang a process on exit
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    if kind == zmq.ROUTER:
        sock.router_mandatory = False  # a reply to a vanished peer is dropped, not an error
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock
