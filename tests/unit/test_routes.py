"""Routes in shared memory: a reader in another process never acts on a half-written route set.

The writer (a supervisor) and the readers (the io's switch, the workers) are different processes.
Route sets can come milliseconds apart (two failures), so a reader copying the tables while the
next set is written must notice and try again: ``Routes.snapshot`` under the sequence lock. The
cross-process test below writes two distinguishable route sets in turn as fast as it can and checks
every snapshot taken meanwhile is one of them whole; its control shows that reading the tables
without the lock (as the readers did before) does see mixtures.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from deft.runtime.dataplane.routes import NONE, W_SEQ, RouteError, Routes, RouteSet

N_BUCKETS, N_PAIRS = 4096, 6
NODES_A = [("a0", "tcp://127.0.0.1:7210", "tcp://127.0.0.1:7310", "tcp://127.0.0.1:7510"),
           ("a1", "tcp://127.0.0.1:7220", "", "")]
NODES_B = [("b0", "tcp://127.0.0.1:8210", "tcp://127.0.0.1:8310", ""),
           ("b1", "tcp://127.0.0.1:8220", "", "tcp://127.0.0.1:8520")]


def route_set(epoch: int) -> RouteSet:
    """Odd epochs: set A, even: set B; every table differs between the two."""
    if epoch % 2:
        pairs = [(0, i, 1, i) for i in range(N_PAIRS)]
        return RouteSet(epoch, NODES_A, pairs, np.arange(N_BUCKETS) % N_PAIRS)
    pairs = [(1, i, 0, i) for i in range(N_PAIRS)]
    return RouteSet(epoch, NODES_B, pairs, (np.arange(N_BUCKETS) + 1) % N_PAIRS)


def whole(epoch: int, nodes: list, rows: np.ndarray, buckets: np.ndarray) -> bool:
    want = route_set(epoch)
    return (nodes == [tuple(n) for n in want.nodes] and np.array_equal(rows, want.rows())
            and np.array_equal(buckets, want.buckets))


@pytest.fixture
def routes():
    r = Routes.create(f"/deft.test{os.getpid()}.routes", N_BUCKETS, "solo", "tcp://127.0.0.1:7000", N_PAIRS)
    try:
        yield r
    finally:
        r.close()


def test_a_snapshot_is_the_route_set_applied(routes):
    routes.apply(route_set(3), self_node=1)
    snap = routes.snapshot()
    assert snap.epoch == 3 and snap.self_node == 1 and snap.n_pairs == N_PAIRS
    assert whole(3, snap.nodes(), snap.table[:N_PAIRS], snap.bucket_pair)
    assert snap.table[N_PAIRS:].min() == NONE
    assert snap.roles_of(2) == ([], [2])            # node 1 holds every secondary of set A
    routes.apply(route_set(4), self_node=1)
    assert snap.epoch == 3 and routes.snapshot().epoch == 4   # a copy: later writes do not reach it


def test_a_stale_epoch_is_refused_and_leaves_the_routes_as_they_were(routes):
    routes.apply(route_set(5), self_node=0)
    with pytest.raises(RouteError, match="not newer"):
        routes.apply(route_set(5), self_node=0)
    assert routes.snapshot().epoch == 5


def test_no_snapshot_while_a_write_is_under_way(routes):
    routes.words[W_SEQ] += 1          # what a writer that is part way through looks like
    assert routes.snapshot() is None
    routes.words[W_SEQ] += 1
    assert routes.snapshot() is not None


def _write_forever(name: str, stop) -> None:
    routes = Routes.attach(name)
    epoch = routes.epoch
    while not stop.is_set():
        epoch += 1
        routes.apply(route_set(epoch), self_node=0)
    routes.close()


def _naive_read(routes: Routes) -> tuple:
    """How readers read before the lock: the epoch, then the tables in place."""
    epoch = routes.epoch
    n = routes.n_pairs
    return epoch, routes.nodes(), routes.table[:n].copy(), routes.bucket_pair.copy()


def test_snapshots_taken_while_another_process_writes_are_each_one_whole_route_set(routes):
    routes.apply(route_set(2), self_node=0)   # from here on every route set is A or B
    stop = multiprocessing.Event()
    writer = multiprocessing.get_context("fork").Process(target=_write_forever, args=(routes.name, stop))
    writer.start()
    try:
        taken = refused = torn_snapshots = torn_naive = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            snap = routes.snapshot()
            if snap is None:
                refused += 1
            else:
                taken += 1
                torn_snapshots += not whole(snap.epoch, snap.nodes(), snap.table[: snap.n_pairs], snap.bucket_pair)
            epoch, nodes, rows, buckets = _naive_read(routes)
            torn_naive += not whole(epoch, nodes, rows, buckets)
    finally:
        stop.set()
        writer.join(5)
    assert writer.exitcode == 0
    assert taken > 100 and refused > 0, (taken, refused)   # the reader raced the writer, both ways
    assert torn_snapshots == 0
    assert torn_naive > 0, "control: reads without the lock saw no mixture; the race was not exercised"


def test_every_endpoint_travels_from_the_controllers_request_to_the_tables(routes):
    """A node's fabric, replication and copies endpoints: from placement's request to what its io and
    workers read (a request from an older controller, without copies, leaves them to the 2PC socket)."""
    from deft.runtime.controller.placement import place

    nodes = [("solo", "tcp://127.0.0.1:7000", 3, "tcp://127.0.0.1:7300", "tcp://127.0.0.1:7500"),
             ("other", "tcp://127.0.0.1:7001", 3, "tcp://127.0.0.1:7301", "")]
    req = place(nodes, N_BUCKETS, epoch=5)
    routes.apply(RouteSet.from_request(req, N_BUCKETS, {"solo": 3, "other": 3}), self_node=1)
    assert routes.nodes() == [("other", "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7301", ""),
                              ("solo", "tcp://127.0.0.1:7000", "tcp://127.0.0.1:7300", "tcp://127.0.0.1:7500")]
    req["epoch"] = 6
    req["nodes"] = [n[:3] for n in req["nodes"]]
    routes.apply(RouteSet.from_request(req, N_BUCKETS, {"solo": 3, "other": 3}), self_node=1)
    assert [n[3] for n in routes.nodes()] == ["", ""]
