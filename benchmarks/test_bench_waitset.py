"""What a worker's sleep costs in system calls: zmq.Poller against the wait set (``runtime/waitset.py``).

    .venv/bin/python -m pytest benchmarks/test_bench_waitset.py --benchmark-only

A replicated worker watches four sockets (other nodes' packets, its replicas' 2PC socket, the 2PC
socket of a primary role, a global-state reply socket) and its bell. Each round here does what a
worker's round does to them: one message arrives on one socket and is read, one message is sent on
another, and the worker looks before it sleeps (timeout 0, so the cost is the looking, not the
sleep). zmq_poll asks every socket for ZMQ_EVENTS twice (a poll(2) and a getpid(2) inside libzmq
each); the wait set asks only the sockets used since they were last found empty.
"""

from __future__ import annotations

import os

import pytest
import zmq

from deft.runtime.sockets import make_socket, readable, send_nowait
from deft.runtime.waitset import WaitSet

N_SOCKETS = 4


@pytest.fixture
def sockets():
    ctx = zmq.Context()
    made = []
    ends = []
    for _ in range(N_SOCKETS):
        server = make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*")
        client = make_socket(ctx, zmq.DEALER, connect=server.last_endpoint.decode())
        made += [server, client]
        ends.append((server, client))
    r, w = os.pipe()
    send_nowait(ends[0][1], [b"hello"])   # the ROUTER learns the DEALER's identity
    ends[0][0].poll(2000)
    ident = ends[0][0].recv_multipart()[0]
    try:
        yield ends, ident, r
    finally:
        for s in made:
            s.close(linger=0)
        ctx.term()
        os.close(r)
        os.close(w)


def one_round(ends, ident, wait):
    """A message in on the first socket, read; one out on the second; then look before sleeping."""
    server, client = ends[0]
    server.send_multipart([ident, b"vote"])
    while not wait():     # until it has arrived
        pass
    while readable(client):
        client.recv_multipart()
    send_nowait(ends[1][1], [b"prepare"])
    ends[1][0].recv_multipart()   # the other end takes it (a peer process would)
    wait()


@pytest.mark.parametrize("how", ["poller", "waitset"])
def test_a_round_of_a_worker_with_four_sockets(benchmark, sockets, how):
    ends, ident, bell = sockets
    if how == "poller":
        poller = zmq.Poller()
        poller.register(bell, zmq.POLLIN)
        for _, client in ends:
            poller.register(client, zmq.POLLIN)
        wait = lambda: bool(poller.poll(0))   # noqa: E731
    else:
        waits = WaitSet()
        waits.add(bell)
        for _, client in ends:
            waits.add(client)
        wait = lambda: any(waits.wait(0))   # noqa: E731
    benchmark(one_round, ends, ident, wait)
