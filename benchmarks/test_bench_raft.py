"""Raft benchmarks (pytest-benchmark; run with `make bench`, never part of the unit tests)."""

import random
from pathlib import Path

import pytest

from deft.runtime.consensus import Config, Entry, HardState, MemoryStorage, RaftCore, Role
from deft.runtime.consensus.storage import DiskStorage


def three_nodes() -> dict[int, RaftCore]:
    ids = (1, 2, 3)
    cores = {i: RaftCore(Config(i, ids), MemoryStorage(), random.Random(i)) for i in ids}
    cores[1].campaign()
    pump(cores)
    assert cores[1].role is Role.LEADER
    return cores


def pump(cores: dict[int, RaftCore]) -> None:
    """Deliver everything until quiet (in-memory, zero latency)."""
    busy = True
    while busy:
        busy = False
        for c in cores.values():
            while (rd := c.ready()) is not None:
                busy = True
                c.advance(rd)
                for m in rd.messages:
                    cores[m.dst].step(m)


@pytest.mark.parametrize("batch", [1, 64])
def test_bench_commit_in_memory(benchmark, batch: int) -> None:  # type: ignore[no-untyped-def]
    """Propose `batch` 100-byte commands on a 3-node cluster and run until committed."""
    cores = three_nodes()
    leader = cores[1]
    payload = b"x" * 100

    def run() -> None:
        for _ in range(batch):
            leader.propose(payload)
        pump(cores)

    benchmark(run)
    assert leader.log.committed == leader.log.last_index()


@pytest.mark.parametrize("fsync", [False, True])
def test_bench_disk_append(benchmark, tmp_path: Path, fsync: bool) -> None:  # type: ignore[no-untyped-def]
    """One Ready with one 100-byte entry and a commit update, as a follower persists it."""
    st = DiskStorage(tmp_path, fsync=fsync)
    state = {"i": 0}

    def run() -> None:
        state["i"] += 1
        i = state["i"]
        st.save(HardState(1, 1, i - 1), [Entry(1, i, b"x" * 100)])

    benchmark(run)
    st.close()
