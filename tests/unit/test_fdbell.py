"""The pollable doorbell: rung across processes, waited on beside ZeroMQ sockets, cleaned up with the node."""

from __future__ import annotations

import multiprocessing
import time

import zmq

from deft.runtime.ring import cleanup_node, leftovers, shm_name
from deft.runtime.ring.fdbell import FdBell


def _ring_later(name: str) -> None:
    time.sleep(0.05)
    FdBell.attach(name).ring()


def test_a_ring_from_another_process_wakes_a_zmq_poller(node_id):
    bell = FdBell.create(shm_name(node_id, "bell.test"))
    try:
        assert not bell.wait(0.0)
        proc = multiprocessing.get_context("spawn").Process(target=_ring_later, args=(bell.name,))
        proc.start()
        poller = zmq.Poller()
        poller.register(bell.fileno(), zmq.POLLIN)
        t0 = time.monotonic()
        events = dict(poller.poll(5000))
        proc.join(5)
        assert events.get(bell.fileno()) == zmq.POLLIN and time.monotonic() - t0 < 4
        bell.drain()
        assert not bell.wait(0.0)  # drained: no stale wake-up
    finally:
        bell.close()


def test_many_rings_never_block_and_one_wait_takes_them_all(node_id):
    bell = FdBell.create(shm_name(node_id, "bell.many"))
    try:
        for _ in range(100_000):  # more than a pipe holds
            bell.ring()
        assert bell.wait(0.1) and not bell.wait(0.0)
    finally:
        bell.close()


def test_a_leftover_fifo_is_removed_with_the_node(node_id):
    bell = FdBell.create(shm_name(node_id, "bell.left"))
    bell._owner = False  # as if the supervisor had crashed
    bell.close()
    assert leftovers(node_id) and cleanup_node(node_id) and not leftovers(node_id)
