"""RaftDriver over real ZeroMQ sockets on loopback: elect, commit, lose the leader, re-elect."""

import random
import time
from collections.abc import Iterator

import pytest
import zmq

from deft.runtime.consensus import Config, Entry, EntryKind, MemoryStorage, NotLeader, RaftCore, Role
from deft.runtime.consensus.driver import RaftDriver

IDS = (1, 2, 3)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_cluster(ctx: zmq.Context) -> tuple[dict[int, RaftDriver], dict[int, list[bytes]]]:
    applied: dict[int, list[bytes]] = {i: [] for i in IDS}
    drivers = {}
    for i in IDS:
        storage = MemoryStorage()
        core = RaftCore(Config(i, IDS, election_tick=10, heartbeat_tick=2), storage, random.Random(i))

        def apply(e: Entry, i: int = i) -> None:
            if e.kind is EntryKind.NORMAL:
                applied[i].append(e.data)

        drivers[i] = RaftDriver(core, storage, "tcp://127.0.0.1:*", apply,
                                restore=lambda s: None, tick_seconds=0.01, ctx=ctx)
    endpoints = {i: d.endpoint for i, d in drivers.items()}
    for d in drivers.values():
        d.connect(endpoints)
    return drivers, applied


def run_until(drivers: dict[int, RaftDriver], cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        for d in drivers.values():
            d.run_once(max_wait=0.002)


def leader(drivers: dict[int, RaftDriver]) -> RaftDriver | None:
    ls = [d for d in drivers.values() if d.core.role is Role.LEADER]
    return ls[0] if len(ls) == 1 else None


def test_elect_commit_and_fail_over(ctx: zmq.Context) -> None:
    drivers, applied = make_cluster(ctx)
    try:
        run_until(drivers, lambda: leader(drivers) is not None)
        first = leader(drivers)
        assert first is not None
        first.propose(b"one")
        run_until(drivers, lambda: all(a == [b"one"] for a in applied.values()))
        follower = next(d for d in drivers.values() if d is not first)
        with pytest.raises(NotLeader):
            follower.propose(b"x")
        # The leader dies (sockets closed, no more ticks); the others elect a new one.
        first.close()
        rest = {i: d for i, d in drivers.items() if d is not first}
        run_until(rest, lambda: leader(rest) is not None)
        new = leader(rest)
        assert new is not None and new.core.term > first.core.term
        new.propose(b"two")
        run_until(rest, lambda: all(applied[i] == [b"one", b"two"] for i in rest))
    finally:
        for d in drivers.values():
            d.close()
