"""The wait set: a message is never left unseen, whatever was done with its socket before the sleep.

ZeroMQ's descriptors are edge-triggered and every send, receive or EVENTS may take in the commands
that would make them signal; these tests do each of those just before a sleep and check that a
message already there (or arriving during the sleep) ends it at once.
"""

from __future__ import annotations

import os
import time

import pytest
import zmq

from deft.runtime.sockets import make_socket, readable, send_nowait
from deft.runtime.waitset import WaitSet


class Ctx:
    """A context that closes every socket made in it."""

    def __init__(self):
        self.zctx = zmq.Context()
        self.made = []

    def sock(self, kind, **kw):
        self.made.append(make_socket(self.zctx, kind, **kw))
        return self.made[-1]

    def close(self):
        for s in self.made:
            s.close(linger=0)
        self.zctx.term()


@pytest.fixture
def ctx():
    c = Ctx()
    yield c
    c.close()


def pair(ctx, a_kind=zmq.DEALER, b_kind=zmq.ROUTER):
    b = ctx.sock(b_kind, bind="tcp://127.0.0.1:*")
    a = ctx.sock(a_kind, connect=b.last_endpoint.decode())
    return a, b


def timed_wait(waits, timeout_ms):
    t = time.monotonic()
    out = waits.wait(timeout_ms)
    return out, time.monotonic() - t


def test_an_idle_socket_sleeps_the_whole_timeout_and_a_message_wakes_it(ctx):
    a, b = pair(ctx, zmq.PUSH, zmq.PULL)
    waits = WaitSet()
    waits.add(b)
    (socks, fds), took = timed_wait(waits, 60)
    assert not socks and not fds and took >= 0.05
    assert not b.stale   # found empty: its descriptor signals the next message
    send_nowait(a, [b"x"])
    (socks, _), took = timed_wait(waits, 2000)
    assert socks == {b} and took < 1.0
    assert b.recv() == b"x"


@pytest.mark.parametrize("touch", ["send", "recv", "poll", "events"])
def test_a_message_taken_in_by_another_call_before_the_sleep_still_ends_it(ctx, touch):
    """A DEALER sends (its send may take in the command that said a reply came): the reply is seen."""
    a, b = pair(ctx)
    waits = WaitSet()
    waits.add(a)
    assert waits.wait(0) == (set(), set())
    send_nowait(a, [b"ping"])
    ident, _ = b.recv_multipart()
    b.send_multipart([ident, b"pong"])
    time.sleep(0.05)   # the reply is in a's pipe; a's descriptor signalled
    if touch == "send":
        send_nowait(a, [b"another"])
    elif touch == "recv":
        a.__dict__["stale"] = False
        assert a.recv_multipart() == [b"pong"]   # a recv may leave more behind, unsignalled
        b.send_multipart([ident, b"pong2"])
        b.send_multipart([ident, b"pong3"])
        time.sleep(0.05)
        a.recv_multipart()
    elif touch == "poll":
        assert a.poll(0)
        a.__dict__["stale"] = True   # any zmq call but readable leaves it stale
    else:
        assert readable(a)
    (socks, _), took = timed_wait(waits, 2000)
    assert socks == {a} and took < 0.5


def test_a_socket_not_watched_is_not_looked_at_and_is_seen_when_watched_again(ctx):
    a, b = pair(ctx, zmq.PUSH, zmq.PULL)
    waits = WaitSet()
    waits.add(b)
    assert waits.wait(0) == (set(), set())
    waits.watch(b, False)
    send_nowait(a, [b"x"])
    time.sleep(0.05)
    (socks, _), took = timed_wait(waits, 60)
    assert not socks and took >= 0.05
    waits.watch(b, True)
    (socks, _), took = timed_wait(waits, 2000)
    assert socks == {b} and took < 0.5


def test_descriptors_and_sockets_together_and_removal(ctx):
    a, b = pair(ctx, zmq.PUSH, zmq.PULL)
    r, w = os.pipe()
    try:
        waits = WaitSet()
        waits.add(b)
        waits.add(r)
        os.write(w, b"!")
        socks, fds = waits.wait(1000)
        assert fds == {r} and not socks
        os.read(r, 1)
        send_nowait(a, [b"x"])
        socks, fds = waits.wait(1000)
        assert socks == {b} and not fds
        waits.remove(b)
        waits.remove(r)
        os.write(w, b"!")
        (socks, fds), took = timed_wait(waits, 60)
        assert not socks and not fds and took >= 0.05
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_without_a_message_does_not_end_the_sleep(ctx):
    """A peer connecting sends the socket commands (its descriptor fires) but no message."""
    b = ctx.sock(zmq.PULL, bind="tcp://127.0.0.1:*")
    waits = WaitSet()
    waits.add(b)
    assert waits.wait(0) == (set(), set())
    ctx.sock(zmq.PUSH, connect=b.last_endpoint.decode())
    (socks, fds), took = timed_wait(waits, 150)
    assert not socks and not fds and took >= 0.14


def test_a_plain_pyzmq_socket_is_asked_before_every_sleep(ctx):
    """A monitor socket is made by pyzmq, not make_socket: nothing tracks its use."""
    a, b = pair(ctx, zmq.PUSH, zmq.PULL)
    monitor = a.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        send_nowait(a, [b"x"])          # connected first: a connection that never was cannot drop
        assert b.poll(5000) and b.recv() == b"x"
        waits = WaitSet()
        waits.add(monitor)
        b.close(linger=0)
        socks, _ = waits.wait(5000)
        assert socks == {monitor}
    finally:   # an open monitor would hang the context's term for ever
        a.disable_monitor()
        monitor.close(linger=0)
