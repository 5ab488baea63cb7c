"""Three nodes host the Raft members of the global state: writes, reads, a killed leader, a restart from disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import orjson
import pytest

from deft.tools.ctl import NoAnswer, query
from deft.tools.localnode import LocalNode, free_port, node_config, write_config

pytestmark = pytest.mark.slow


def raft_of(node: LocalNode) -> dict:
    return node.status()["raft"]


def wait_leader(nodes: list[LocalNode], timeout: float = 15.0) -> LocalNode:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for node in nodes:
                if raft_of(node)["role"] == "leader":
                    return node
        except NoAnswer:
            pass
        time.sleep(0.05)
    raise AssertionError("no leader elected")


def op(node: LocalNode, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--node", node.control, "global", *args,
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


@pytest.fixture
def raft_nodes(tmp_path):
    members = {n: f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}" for n in (1, 2, 3)}
    configs = {}
    for n in (1, 2, 3):
        node_id = f"g{os.getpid()}n{n}"
        conf = node_config(node_id, "flowcounter", 1, {},
                           raft={"id": n, "members": members, "data_dir": str(tmp_path / f"raft{n}")})
        configs[n] = write_config(tmp_path / f"{node_id}.toml", conf)
    nodes = {n: LocalNode.start(configs[n], tmp_path / f"n{n}.log") for n in (1, 2, 3)}
    started = list(nodes.values())
    try:
        for node in nodes.values():
            node.wait_ready()
        yield nodes, configs, started
    finally:
        for node in started:
            node.stop()


def test_writes_reach_every_replica_and_survive_a_killed_leader(raft_nodes, tmp_path):
    nodes, configs, started = raft_nodes
    leader = wait_leader(list(nodes.values()))
    assert op(leader, "incr", "portscan/10.0.0.1", "5")["result"] == 5
    follower = next(n for n in nodes.values() if n is not leader)
    refused = query(follower.control, {"cmd": "global_op", "op": "incr", "key": "k", "args": [1]})
    assert not refused["ok"] and "not the leader" in refused["error"]
    assert op(leader, "get", "portscan/10.0.0.1", "--linearizable")["value"] == 5
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(op(n, "get", "portscan/10.0.0.1")["value"] != 5
                                              for n in nodes.values()):
        time.sleep(0.05)
    assert all(op(n, "get", "portscan/10.0.0.1")["value"] == 5 for n in nodes.values())

    # kill -9 the leader's whole node; the other two elect a new leader and go on
    dead_id = next(k for k, n in nodes.items() if n is leader)
    os.kill(leader.pid, 9)
    leader.proc.wait(10)
    leader.stop()
    survivors = [n for k, n in nodes.items() if k != dead_id]
    t0 = time.monotonic()
    new_leader = wait_leader(survivors)
    failover_s = time.monotonic() - t0
    assert failover_s < 5
    assert op(new_leader, "incr", "portscan/10.0.0.1", "2")["result"] == 7

    # the dead node comes back from its disk and catches up; every replica ends alike
    back = LocalNode.start(configs[dead_id], tmp_path / "back.log")
    started.append(back)
    back.wait_ready()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        digests = {raft_of(n)["digest"] for n in [*survivors, back]}
        if len(digests) == 1 and op(back, "get", "portscan/10.0.0.1")["value"] == 7:
            break
        time.sleep(0.1)
    assert len(digests) == 1
    assert op(back, "get", "portscan/10.0.0.1")["value"] == 7


def test_a_node_without_raft_says_so(tmp_path):
    node_id = f"g{os.getpid()}solo"
    node = LocalNode.start(write_config(tmp_path / "solo.toml", node_config(node_id, "flowcounter", 1, {})),
                           tmp_path / "solo.log")
    try:
        node.wait_ready()
        reply = query(node.control, {"cmd": "global_get", "key": "x"})
        assert not reply["ok"] and "no [raft] section" in reply["error"]
        assert node.status()["raft"] is None
    finally:
        node.stop()


def raft_cmd(node: LocalNode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--node", node.control, "raft", *args],
                          capture_output=True, text=True, timeout=30)


def test_a_new_node_joins_as_a_learner_catches_up_and_is_promoted_to_voter(raft_nodes, tmp_path):
    """Membership at run time, one member at a time: a 4th node that lists the voters and itself as a
    learner gets the whole state once the leader adds it, votes once promoted, and a write then needs
    it (one original voter down: 3 of 4)."""
    import tomllib

    nodes, configs, started = raft_nodes
    leader = wait_leader(list(nodes.values()))
    for _ in range(5):
        op(leader, "incr", "joined/count", "1")
    members = tomllib.loads(configs[1].read_text())["raft"]["members"]
    endpoint = f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    conf = node_config(f"g{os.getpid()}n4", "flowcounter", 1, {},
                       raft={"id": 4, "members": members, "learners": {"4": endpoint},
                             "data_dir": str(tmp_path / "raft4")})
    fourth = LocalNode.start(write_config(tmp_path / "n4.toml", conf), tmp_path / "n4.log")
    started.append(fourth)
    fourth.wait_ready()
    assert raft_of(fourth)["role"] != "leader" and op(fourth, "get", "joined/count")["value"] is None

    for bad, says in (({"op": "explode", "id": 4}, "op must be"), ({"op": "promote", "id": "4"}, "id must be"),
                      ({"op": "add_learner", "id": 4}, "needs the member's endpoint"),
                      ({"op": "promote", "id": 4}, "4 is not a learner"), ({"op": "remove", "id": 9}, "not a member")):
        reply = query(leader.control, {"cmd": "raft_member", **bad})
        assert not reply["ok"] and says in reply["error"], (bad, reply)
    follower = next(n for n in nodes.values() if n is not leader)
    refused = raft_cmd(follower, "add-learner", "4", endpoint)
    assert refused.returncode == 1 and "not the leader" in refused.stderr
    added = raft_cmd(leader, "add-learner", "4", endpoint)
    assert added.returncode == 0 and "learners [4]" in added.stdout, added.stderr
    deadline = time.monotonic() + 10
    while op(fourth, "get", "joined/count")["value"] != 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert op(fourth, "get", "joined/count")["value"] == 5                  # caught up as a learner
    assert raft_of(leader)["learners"] == [4] and raft_of(leader)["voters"] == [1, 2, 3]

    deadline = time.monotonic() + 10
    while (promoted := raft_cmd(leader, "promote", "4")).returncode != 0 and time.monotonic() < deadline:
        assert "not caught up" in promoted.stderr, promoted.stderr
        time.sleep(0.1)
    assert promoted.returncode == 0 and "voters [1, 2, 3, 4]" in promoted.stdout, promoted.stderr
    assert raft_of(fourth)["voters"] == [1, 2, 3, 4] or time.sleep(0.5) or raft_of(fourth)["voters"] == [1, 2, 3, 4]

    # one original voter down: the write needs the new voter's ack (3 of 4)
    down = next(n for n in nodes.values() if n is not leader)
    os.kill(down.pid, 9)
    down.proc.wait(10)
    down.stop()
    assert op(leader, "incr", "joined/count", "1")["result"] == 6
    deadline = time.monotonic() + 10
    while op(fourth, "get", "joined/count")["value"] != 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert op(fourth, "get", "joined/count")["value"] == 6
    live = [n for n in [*nodes.values(), fourth] if n is not down]
    assert len({raft_of(n)["digest"] for n in live}) == 1
