"""Seeded simulation of whole clusters (see sim.py). RAFT_SEEDS=N runs N seeds, RAFT_SEED=S one."""

import os
import sys
from pathlib import Path

import pytest

from deft.runtime.consensus import HardState, NotLeader, ReadState, Role, core, log

from .sim import Faults, Simulation


def _seeds() -> list[int]:
    if "RAFT_SEED" in os.environ:
        return [int(os.environ["RAFT_SEED"])]
    start = int(os.environ.get("RAFT_SEED_START", "0"))
    return list(range(start, start + int(os.environ.get("RAFT_SEEDS", "200"))))


@pytest.mark.parametrize("seed", _seeds())
def test_seed(seed: int) -> None:
    try:
        Simulation(seed).run()
    except Exception as e:  # any failure gets the one-line repro
        repro = f"RAFT_SEED={seed} {sys.executable} -m pytest -q tests/consensus/test_raft_sim.py"
        raise AssertionError(f"seed {seed} failed: {type(e).__name__}: {e}\nrepro: {repro}") from e


def test_fault_free_run_completes_many_operations() -> None:
    sim = Simulation(1, faults=Faults(), n_nodes=5).run()
    assert len(sim.history) > 100
    assert sim.stats["leaders"] == 1


def test_heavy_faults_still_converge_after_healing() -> None:
    heavy = Faults(drop=0.3, dup=0.2, slow=0.3, chaos_ms=80, crash=True, crash_mid_ready=0.02,
                   partition=True, pause=True, skew=0.3)
    for seed in range(5):
        Simulation(seed, faults=heavy).run()


# The checkers must catch known bugs: each mutation below breaks Raft on purpose.
def _fails_somewhere(seeds: range, faults: Faults | None = None) -> bool:
    for seed in seeds:
        try:
            Simulation(seed, faults=faults).run()
        except Exception:
            return True
    return False


def test_catches_reads_served_without_confirming_leadership(monkeypatch: pytest.MonkeyPatch) -> None:
    def unconfirmed_read(self: core.RaftCore, context: bytes) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.id, self.lead)
        self.read_states.append(ReadState(self.log.committed, context))  # no heartbeat round

    monkeypatch.setattr(core.RaftCore, "read_index", unconfirmed_read)
    # A paused old leader wakes up still believing it leads: a stale read.
    assert _fails_somewhere(range(60), Faults(chaos_ms=150, pause=True))


def test_catches_voting_for_a_stale_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log.RaftLog, "is_up_to_date", lambda self, i, t: True)
    assert _fails_somewhere(range(40))


def test_catches_a_vote_that_is_not_persisted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.RaftCore, "hard_state",
                        lambda self: HardState(self.term, None, self.log.committed))
    assert _fails_somewhere(range(5))


def test_catches_truncating_matching_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = log.RaftLog.maybe_append

    def pysyncobj_append(self, prev_index, prev_term, commit, entries):  # type: ignore[no-untyped-def]
        if self.match_term(prev_index, prev_term) and self.committed <= prev_index < self.last_index():
            del self.entries[prev_index - self.offset:]
            self.stable = min(self.stable, prev_index)
        return orig(self, prev_index, prev_term, commit, entries)

    monkeypatch.setattr(log.RaftLog, "maybe_append", pysyncobj_append)
    assert _fails_somewhere(range(40))


@pytest.mark.parametrize("seed", range(int(os.environ.get("RAFT_DISK_SEEDS", "12"))))
def test_seed_on_disk(seed: int, tmp_path: Path) -> None:
    """The same simulation with real files: crashes close them, restarts replay them."""
    heavy_disk = Faults(drop=0.05, chaos_ms=150, crash=True, crash_mid_ready=0.03, partition=True,
                        reconfig=True)
    try:
        Simulation(seed, faults=heavy_disk, disk_dir=tmp_path, compact_every=10).run()
    except Exception as e:
        repro = (f"RAFT_DISK_SEEDS={seed + 1} {sys.executable} -m pytest -q "
                 f"'tests/consensus/test_raft_sim.py::test_seed_on_disk[{seed}]'")
        raise AssertionError(f"seed {seed} on disk failed: {type(e).__name__}: {e}\nrepro: {repro}") from e
