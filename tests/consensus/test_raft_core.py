"""RaftCore unit tests that read better as code than as scripts."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from deft.runtime.consensus import (Config, InvalidRequest, InvariantViolation, Membership,
                                    MemoryStorage, Message, MsgType, NotLeader, RaftCore, Role)
from deft.runtime.errors import ConfigError, DeftError

from .interaction import Env
from .sim import Simulation


def cluster(n: int = 3, **opts: str) -> Env:
    env = Env()
    env.run(f"add-nodes {n} " + " ".join(f"{k}={v}" for k, v in opts.items()))
    env.run("campaign 1")
    env.run("stabilize")
    assert env.core(1).role is Role.LEADER
    return env


def test_single_node_commits_alone() -> None:
    core = RaftCore(Config(1, (1,)), MemoryStorage(), random.Random(0))
    core.campaign()
    assert core.role is Role.LEADER
    idx = core.propose(b"x")
    rd = core.ready()
    assert rd is not None
    assert [e.index for e in rd.committed] == [1, idx]
    core.advance(rd)
    assert core.ready() is None


def test_propose_on_follower_raises_not_leader_with_hint() -> None:
    env = cluster()
    with pytest.raises(NotLeader) as info:
        env.core(2).propose(b"x")
    assert info.value.leader_hint == 1
    assert isinstance(info.value, DeftError)


@pytest.mark.parametrize("kwargs", [
    {"node_id": 1, "peers": ()},
    {"node_id": 1, "peers": (1, 2), "learners": (2,)},
    {"node_id": 1, "peers": (1, 1, 2)},
    {"node_id": 1, "peers": (1,), "election_tick": 2, "heartbeat_tick": 2},
    {"node_id": 1, "peers": (1,), "max_inflight": 0},
])
def test_bad_config_raises_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Config(**kwargs)


def test_ready_twice_without_advance_is_refused() -> None:
    core = RaftCore(Config(1, (1, 2, 3)), MemoryStorage(), random.Random(0))
    core.campaign()
    assert core.ready() is not None
    with pytest.raises(InvariantViolation):
        core.ready()


def test_vote_and_its_hard_state_come_in_one_ready() -> None:
    core = RaftCore(Config(2, (1, 2, 3), pre_vote=False), MemoryStorage(), random.Random(0))
    core.step(Message(MsgType.VOTE, 1, 2, term=1))
    rd = core.ready()
    assert rd is not None and rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (1, 1)
    assert [m.type for m in rd.messages] == [MsgType.VOTE_RESP]


def test_restart_keeps_term_vote_commit_and_reapplies() -> None:
    env = cluster()
    env.run("propose 1 a")
    env.run("stabilize")
    before = env.core(2).hard_state()
    env.run("crash 2")
    env.run("restart 2")
    core = env.core(2)
    assert core.hard_state() == before
    rd = core.ready()
    assert rd is not None and [e.data for e in rd.committed] == [b"", b"a"]


def test_randomized_election_timeout_range() -> None:
    seen = set()
    for seed in range(200):
        core = RaftCore(Config(1, (1, 2, 3), election_tick=10), MemoryStorage(), random.Random(seed))
        seen.add(core.randomized_timeout)
    assert seen == set(range(10, 20))


def test_leader_steps_down_on_higher_term() -> None:
    env = cluster()
    env.core(1).step(Message(MsgType.APP_RESP, 2, 1, term=5))
    assert env.core(1).role is Role.FOLLOWER and env.core(1).term == 5


def test_batching_and_pipelining_bounds() -> None:
    env = cluster(**{"max-entries": "4"})
    leader = env.core(1)
    for k in range(40):
        leader.propose(b"%d" % k)
    rd = leader.ready()
    assert rd is not None
    apps = [m for m in rd.messages if m.type is MsgType.APP and m.dst == 2]
    # Sent at once, 4 entries per message, pipelined: all 40 go out in this Ready.
    assert [len(m.entries) for m in apps] == [4] * 10
    assert [m.index for m in apps] == list(range(1, 41, 4))  # prev index of each batch
    leader.advance(rd)


def test_dropped_append_is_repaired_after_heartbeat() -> None:
    env = cluster()
    env.run("propose 1 a")
    env.run("stabilize 1 2")  # everything node 1 sends to node 3 stays in the network
    env.run("deliver-msgs to=3 drop=true")
    assert env.core(3).log.last_index() == 1
    env.run("tick-heartbeat 1")
    env.run("stabilize")
    assert env.core(3).log.last_index() == 2 and env.core(3).log.committed == 2


def test_simulation_is_deterministic() -> None:
    a = Simulation(11).run()
    b = Simulation(11).run()
    assert a.stats == b.stats
    assert [(o.client, o.call, o.ret, o.output) for o in a.history] == \
        [(o.client, o.call, o.ret, o.output) for o in b.history]


def test_conf_change_waits_for_a_commit_in_the_leaders_term() -> None:
    env = Env()
    env.run("add-nodes 3")
    env.run("campaign 1")
    env.run("stabilize")
    env.run("campaign 2")  # node 2 takes over; its noop is not committed yet
    env.run("process-ready 2")
    env.run("deliver-msgs")
    env.run("process-ready 1 3")
    env.run("deliver-msgs")
    leader = env.core(2)
    assert leader.role is Role.LEADER and leader.log.term(leader.log.committed) != leader.term
    with pytest.raises(InvalidRequest, match="committed an entry of its term"):
        leader.propose_conf_change(Membership.of([1, 2, 3], [4]))
    env.run("stabilize")
    assert leader.propose_conf_change(Membership.of([1, 2, 3], [4])) == leader.log.last_index()


def test_learner_and_non_member_never_campaign() -> None:
    core = RaftCore(Config(4, (1, 2, 3)), MemoryStorage(), random.Random(0))
    for _ in range(100):
        core.tick()
    core.campaign()
    assert core.role is Role.FOLLOWER and core.term == 0 and core.ready() is None


def test_read_index_on_a_single_node_is_immediate() -> None:
    core = RaftCore(Config(1, (1,)), MemoryStorage(), random.Random(0))
    core.campaign()
    core.read_index(b"r")
    rd = core.ready()
    assert rd is not None and [(s.index, s.context) for s in rd.read_states] == [(1, b"r")]


def test_read_index_confirms_older_pending_reads_too() -> None:
    env = cluster()
    leader = env.core(1)
    leader.read_index(b"a")
    leader.read_index(b"b")
    env.run("process-ready 1")
    # Only read b's heartbeat reaches node 2: its ack also confirms the older read a.
    env.network = [m for m in env.network if m.context == b"b" and m.dst == 2]
    env.run("deliver-msgs")
    env.run("process-ready 2")
    env.run("deliver-msgs from=2 type=MsgHeartbeatResp")
    rd = leader.ready()
    assert rd is not None and [s.context for s in rd.read_states] == [b"a", b"b"]


def test_follower_read_index_is_confirmed_by_the_leader() -> None:
    env = cluster()
    env.run("propose 1 x")
    env.run("stabilize")
    env.core(2).read_index(b"f")
    env.run("stabilize")
    # The follower got the leader's commit index at the time of the read, confirmed.
    assert env.read_log == [(2, 2, b"f")]
    fresh = RaftCore(Config(3, (1, 2, 3)), MemoryStorage(), random.Random(0))
    with pytest.raises(NotLeader):
        fresh.read_index(b"g")  # no leader known


def test_simulation_does_not_depend_on_hash_randomization() -> None:
    """Set/dict iteration must not leak into a run: same seed, different PYTHONHASHSEED."""
    code = ("import hashlib; from tests.consensus.sim import Simulation; s = Simulation(3).run(); "
            "print(hashlib.sha256(repr((s.stats, [(o.client, o.call, o.ret, o.output) "
            "for o in s.history])).encode()).hexdigest())")
    root = Path(__file__).resolve().parents[2]
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": h}, check=True).stdout
            for h in ("1", "2")}
    assert len(outs) == 1


def test_compact_beyond_applied_is_refused() -> None:
    env = cluster()
    with pytest.raises(InvalidRequest):
        env.core(1).compact(5, b"")
