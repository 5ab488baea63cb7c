"""pyzmq-style socket fixtures for the replication driver tests.

Shapes taken from pyzmq's own tests: a context that must terminate within a
timeout (or the test fails, naming leaked sockets as the likely cause), a
tracked socket factory whose sockets are closed with linger 0, random
loopback ports and a receive helper that fails instead of hanging (no test can hang
the run: pytest-timeout, and ``TEST_TIMEOUT`` for these tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

TERM_TIMEOUT = 2.0
TEST_TIMEOUT = 10


def term_context(ctx: zmq.Context, timeout: float) -> None:
    """Terminate ``ctx`` in a thread; fail (instead of hanging) if sockets are left open."""
    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(timeout=timeout)
    if t.is_alive():
        pytest.fail("zmq context did not terminate: open sockets likely remain in the test")


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    term_context(ctx, TERM_TIMEOUT)


@pytest.fixture
def socket(context: zmq.Context) -> Iterator[Callable[..., zmq.Socket]]:
    """``socket(zmq.DEALER)``: a socket closed (linger 0) when the test ends."""
    made: list[zmq.Socket] = []

    def make(kind: int, **options: Any) -> zmq.Socket:
        s = context.socket(kind)
        s.linger = 0
        for name, value in options.items():
            setattr(s, name, value)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(linger=0)


def bind_random(sock: zmq.Socket) -> str:
    """Bind to a random loopback port; the endpoint to connect to."""
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def random_endpoint() -> Callable[[zmq.Socket], str]:
    return bind_random


@pytest.fixture
def bound_pair(socket: Callable[..., zmq.Socket]) -> Callable[[int, int], tuple[zmq.Socket, zmq.Socket]]:
    """``bound_pair(zmq.ROUTER, zmq.DEALER)``: the first bound to a random port, the second connected."""

    def make(bound_kind: int, connected_kind: int) -> tuple[zmq.Socket, zmq.Socket]:
        a = socket(bound_kind)
        b = socket(connected_kind)
        b.connect(bind_random(a))
        return a, b

    return make


def recv_frames(sock: zmq.Socket, timeout: float = 1.0) -> list[bytes]:
    """One multipart message, or a test failure after ``timeout`` seconds (never a hang)."""
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), f"nothing received within {timeout} s"
    return sock.recv_multipart(zmq.NOBLOCK)


@pytest.fixture
def recv() -> Callable[..., list[bytes]]:
    return recv_frames
