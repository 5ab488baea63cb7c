"""The multipart helpers of ``runtime/sockets.py`` keep pyzmq's send_multipart / recv_multipart contract."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from deft.runtime.sockets import make_socket, readable, recv_frames, send_frames, send_nowait


@pytest.fixture
def pair():
    ctx = zmq.Context()
    port = make_socket(ctx, zmq.PULL, bind="tcp://127.0.0.1:0", hwm=4)
    endpoint = port.getsockopt_string(zmq.LAST_ENDPOINT)
    push = make_socket(ctx, zmq.PUSH, connect=endpoint, hwm=4)
    try:
        yield push, port
    finally:
        push.close()
        port.close()
        ctx.term()


def wait_readable(sock, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not readable(sock):
        assert time.monotonic() < deadline, "nothing arrived"
        sock.poll(50)


def test_frames_arrive_whole_and_in_order(pair):
    push, pull = pair
    array = np.arange(1000, dtype=np.uint64)
    messages = [[b"one"], [b"a", b"", b"c"], [b"head", memoryview(b"view"), array]]
    for frames in messages:
        send_frames(push, frames, copy=False)
    for frames in messages:
        wait_readable(pull)
        got = recv_frames(pull, zmq.NOBLOCK)
        assert [bytes(f.buffer) for f in got] == [bytes(memoryview(f)) for f in frames]
        assert not got[-1].more and all(f.more for f in got[:-1])
    assert not readable(pull)


def test_a_full_socket_takes_nothing_of_a_message(pair):
    """NOBLOCK at the high-water mark: zmq.Again before the first frame, never half a message."""
    push, pull = pair
    sent = 0
    while send_nowait(push, [b"x", str(sent).encode(), b"z"]):
        sent += 1
        assert sent < 10_000, "the high-water mark never held"
    got = []
    while len(got) < sent:
        wait_readable(pull)
        frames = recv_frames(pull, zmq.NOBLOCK)
        assert [bytes(f.buffer) for f in frames] == [b"x", str(len(got)).encode(), b"z"]
        got.append(frames)
    time.sleep(0.05)
    assert not readable(pull)
