"""SPSC ring: wrap-around, full, empty, batch sizes, two processes, crash clean-up."""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.errors import RingEmpty, RingError, RingFull
from deft.runtime.ring import Doorbell, Ring, cleanup_node, leftovers, shm_name


def batch(start: int, n: int) -> np.ndarray:
    b = empty_batch(n)
    b["seq"] = np.arange(start, start + n)
    b["frame_len"] = 60
    b["frame"][:, 0] = (np.arange(start, start + n) % 251).astype(np.uint8)
    return b


@pytest.fixture
def ring_pair(node_id):
    name = shm_name(node_id, "r")
    producer = Ring.create(name, PACKET_DTYPE, 8)
    consumer = Ring.attach(name, PACKET_DTYPE)
    yield producer, consumer
    consumer.close()
    producer.close()


def test_empty_ring(ring_pair):
    _, c = ring_pair
    assert len(c) == 0
    assert len(c.peek(4)) == 0
    with pytest.raises(RingEmpty):
        c.pop_nowait(4)


def test_full_ring_refuses_whole_batch_and_push_some_fills(ring_pair):
    p, c = ring_pair
    assert p.push_some(batch(0, 6)) == 6
    with pytest.raises(RingFull):
        p.push_nowait(batch(6, 3))
    assert p.push_some(batch(6, 3)) == 2
    assert len(c) == 8 and p.free() == 0
    assert c.pop(100)["seq"].tolist() == list(range(8))


def test_wrap_around_keeps_order_and_bytes(ring_pair):
    p, c = ring_pair
    seen = []
    nxt = 0
    for step in range(50):
        nxt += p.push_some(batch(nxt, 1 + step % 7))
        out = c.pop(1 + (step * 3) % 5)
        seen.extend(out["seq"].tolist())
        assert (out["frame"][:, 0] == out["seq"] % 251).all()
    seen.extend(c.pop(100)["seq"].tolist())
    assert seen == list(range(nxt))


def test_peek_stops_at_wrap_and_release_checks_bounds(ring_pair):
    p, c = ring_pair
    p.push_some(batch(0, 6))
    c.release(6)
    p.push_some(batch(6, 5))       # slots 6, 7, 0, 1, 2
    view = c.peek(10)
    assert view["seq"].tolist() == [6, 7]
    c.release(2)
    assert c.peek(10)["seq"].tolist() == [8, 9, 10]
    with pytest.raises(RingError):
        c.release(4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=60))
def test_ring_behaves_like_a_bounded_deque(ops):
    name = shm_name(f"h{os.getpid()}", "prop")
    ring = Ring.create(name, PACKET_DTYPE, 16)
    model: collections.deque[int] = collections.deque()
    nxt = 0
    try:
        for is_push, n in ops:
            if is_push:
                pushed = ring.push_some(batch(nxt, n))
                assert pushed == min(n, 16 - len(model))
                model.extend(range(nxt, nxt + pushed))
                nxt += n
            else:
                got = ring.pop(n)["seq"].tolist()
                want = [model.popleft() for _ in range(min(n, len(model)))]
                assert got == want
            assert len(ring) == len(model)
    finally:
        ring.close()


def test_attach_checks_layout(node_id):
    name = shm_name(node_id, "r")
    ring = Ring.create(name, PACKET_DTYPE, 8)
    try:
        with pytest.raises(RingError, match="slot size"):
            Ring.attach(name, np.dtype([("x", "<u8")]))
        with pytest.raises(RingError, match="does not exist"):
            Ring.attach(shm_name(node_id, "missing"), PACKET_DTYPE)
        with pytest.raises(ValueError, match="power of two"):
            Ring.create(shm_name(node_id, "bad"), PACKET_DTYPE, 6)
    finally:
        ring.close()


def test_a_ring_the_shared_memory_cannot_hold_fails_at_creation(node_id):
    """Its memory is allocated when it is made: too little /dev/shm is an error then, naming the segment
    and the size, and nothing is left behind (not a SIGBUS for whoever first touches a missing page)."""
    from deft.runtime.ring.shm import SHM_DIR

    vfs = os.statvfs(SHM_DIR)
    slots = 1 << ((vfs.f_blocks * vfs.f_frsize) // PACKET_DTYPE.itemsize).bit_length()   # more than it holds
    name = shm_name(node_id, "huge")
    with pytest.raises(RingError, match=r"cannot allocate \d+ bytes of shared memory for /deft\..*huge"):
        Ring.create(name, PACKET_DTYPE, slots)
    assert not os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def test_a_ring_is_in_memory_when_made(node_id):
    """Every page of a new ring is allocated (not a hole the data path would fault in)."""
    from deft.runtime.ring.shm import SHM_DIR

    name = shm_name(node_id, "full")
    ring = Ring.create(name, PACKET_DTYPE, 64)
    try:
        st = os.stat(os.path.join(SHM_DIR, name.lstrip("/")))
        assert st.st_blocks * 512 >= st.st_size >= 64 * PACKET_DTYPE.itemsize
    finally:
        ring.close()


def _consumer(name: str, bell_name: str, total: int, result) -> None:
    ring = Ring.attach(name, PACKET_DTYPE)
    bell = Doorbell.attach(bell_name)
    expected = 0
    ok = True
    while expected < total:
        view = ring.peek(64)
        if len(view) == 0:
            bell.wait(0.05)
            continue
        seqs = view["seq"]
        ok &= bool((seqs == np.arange(expected, expected + len(seqs))).all())
        expected += len(seqs)
        ring.release(len(view))
    result.value = expected if ok else -1
    ring.close()
    bell.close()


def test_two_processes_move_every_record_in_order(node_id):
    name, bell_name = shm_name(node_id, "r"), shm_name(node_id, "bell")
    ring = Ring.create(name, PACKET_DTYPE, 256)
    bell = Doorbell.create(bell_name)
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Value("q", 0)
    total = 20_000
    proc = ctx.Process(target=_consumer, args=(name, bell_name, total, result))
    proc.start()
    try:
        sent = 0
        deadline = time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            n = ring.push_some(batch(sent, min(64, total - sent)))
            sent += n
            bell.ring()
            if n == 0:
                time.sleep(0.0001)
        proc.join(30)
        assert result.value == total
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        ring.close()
        bell.close()


def test_idle_consumer_sleeps_until_rung(node_id):
    bell = Doorbell.create(shm_name(node_id, "bell"))
    try:
        t0 = time.monotonic()
        assert bell.wait(0.05) is False
        assert time.monotonic() - t0 >= 0.04
        bell.ring()
        assert bell.wait(1.0) is True
    finally:
        bell.close()


CRASHER = """
import sys, time
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.ring import Ring, Doorbell, shm_name
ring = Ring.create(shm_name(sys.argv[1], "in"), PACKET_DTYPE, 64)
bell = Doorbell.create(shm_name(sys.argv[1], "bell"))
print("ready", flush=True)
time.sleep(60)
"""


def test_crashed_creator_leftovers_are_removed_on_next_start(node_id):
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, node_id], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert leftovers(node_id) == [f"deft.{node_id}.in", f"sem.deft.{node_id}.bell"]
    assert sorted(cleanup_node(node_id)) == [f"deft.{node_id}.in", f"sem.deft.{node_id}.bell"]
    assert leftovers(node_id) == []


def test_a_third_process_reading_the_length_never_sees_it_negative(ring_pair, node_id):
    """The supervisor's beat reads a worker's input ring from a third process: if the consumer pops past
    the tail it read, between its two reads, the length must not come out negative (it raised in the
    beat thread, which died, and the controller failed the live node)."""
    p, c = ring_pair
    observer = Ring.attach(shm_name(node_id, "r"), PACKET_DTYPE)
    words = observer._words
    fired = []

    class Racing:   # the observer's first read of a counter lets the other two processes move on
        def __getitem__(self, i):
            value = words[i]
            if not fired:
                fired.append(i)
                p.push_some(batch(0, 3))
                c.pop_nowait(3)
            return value

    p.push_some(batch(0, 2))
    c.pop_nowait(2)
    observer._words = Racing()
    try:
        assert 0 <= len(observer) <= observer.n_slots
        assert 0 <= observer.occupancy() <= observer.n_slots
    finally:
        observer._words = words
        observer.close()
