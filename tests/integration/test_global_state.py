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
