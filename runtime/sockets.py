"""The one place ZeroMQ sockets are made, so options (and later CURVE) live together.

Every ZeroMQ socket of the runtime and its tools comes from ``make_socket``
(``tests/test_packaging.py`` checks that no other module calls ``.socket(``
on a context).
"""

from __future__ import annotations

import zmq


def make_socket(ctx: zmq.Context, kind: int, *, bind: str | None = None, connect: str | None = None,
                hwm: int = 10_000, identity: bytes | None = None, immediate: bool = False,
                subscribe: bytes | None = None) -> zmq.Socket:
    """A socket with linger 0 and both high-water marks at ``hwm``.

    ``identity`` names a DEALER to its ROUTER; ``immediate`` queues nothing for a
    peer that is not connected; ``subscribe`` is a SUB socket's topic prefix.
    """
    sock = ctx.socket(kind)
    sock.linger = 0  # an abandoned socket must never hang a process on exit
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    if kind == zmq.ROUTER:
        sock.router_mandatory = False  # a reply to a vanished peer is dropped, not an error
    if identity is not None:
        sock.identity = identity
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock
