"""deft-controller with real nodes: heartbeats, failure detection, drills, garbage on its sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
import zmq

from deft.tools.localnode import LocalController, LocalNode, controller_config, node_config, to_toml, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    """A controller and two flowcounter nodes that beat to it every 10 ms."""
    cfg = controller_config(heartbeat_ms=10, miss_limit=3)
    (tmp_path / "controller.toml").write_text(to_toml(cfg))
    ctl = LocalController.start(tmp_path / "controller.toml", tmp_path / "controller.log")
    nodes = []
    for n in (1, 2):
        node_id = f"c{os.getpid()}n{n}"
        conf = node_config(node_id, "flowcounter", 2, {}, node={"controller": cfg["controller"]["heartbeats"]})
        node = LocalNode.start(write_config(tmp_path / f"{node_id}.toml", conf), tmp_path / f"{node_id}.log")
        nodes.append(node)
    try:
        for node in nodes:
            node.wait_ready()
        ctl.wait_for(lambda st: len(st["nodes"]) == 2 and all(i["state"] == "up" for i in st["instances"])
                     and len(st["instances"]) == 4)
        yield ctl, nodes
    finally:
        for node in nodes:
            node.stop()
        ctl.stop()


def ctl_cmd(ctl, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--controller", ctl.control, *args],
                          capture_output=True, text=True, timeout=30)


def test_status_lists_nodes_and_instances_with_pids(cluster):
    ctl, nodes = cluster
    out = ctl_cmd(ctl, "status", "--json")
    assert out.returncode == 0, out.stderr
    st = orjson.loads(out.stdout)
    assert {n["id"]: n["pid"] for n in st["nodes"]} == {n.node_id: n.pid for n in nodes}
    for inst in st["instances"]:
        assert {"id", "node", "role", "peer", "pid"} <= set(inst) and inst["pid"] and inst["role"] == "primary"
    assert "instance" in ctl_cmd(ctl, "status").stdout


def test_a_killed_worker_is_reported_at_once_and_its_recovery_timed(cluster):
    ctl, nodes = cluster
    victim = f"{nodes[0].node_id}/nf1"
    out = ctl_cmd(ctl, "fail", "nf", victim)
    assert out.returncode == 0, out.stderr
    st = ctl.wait_for(lambda st: any(e["event"] == "instance_recovered" and e["instance"] == victim
                                     for e in st["events"]))
    failed = [e for e in st["events"] if e["event"] == "instance_failed" and e["instance"] == victim]
    recovered = [e for e in st["events"] if e["event"] == "instance_recovered"][-1]
    assert any("exited with -9" in e["why"] for e in failed)
    assert recovered["recovery_ms"] < 5000
    # (a node late with its beats under heavy load is counted in st["false_suspicions"]; not asserted,
    # it depends on what else the machine runs)


def test_a_killed_node_is_declared_failed_as_its_connection_closes(cluster):
    """A dead supervisor's sockets are closed by the kernel: the controller's monitored connection to
    its control socket says so at once, before the beats are missed (``liveness.py``)."""
    ctl, nodes = cluster
    t0 = time.monotonic()
    out = ctl_cmd(ctl, "fail", "node", nodes[1].node_id)
    assert out.returncode == 0, out.stderr
    st = ctl.wait_for(lambda st: any(n["id"] == nodes[1].node_id and n["state"] == "failed" for n in st["nodes"]))
    assert time.monotonic() - t0 < 5
    event = [e for e in st["events"] if e["event"] == "node_failed" and e["node"] == nodes[1].node_id][-1]
    # by the connection, not by 3 missed beats (which would say "missed beats"; how long the node was
    # silent by then is a timing, 39 ms once on a loaded machine, not asserted)
    assert event["why"] == "connection lost", event
    dead = [i for i in st["instances"] if i["node"] == nodes[1].node_id]
    assert dead and all(i["state"] == "failed" for i in dead)
    assert all(i["state"] == "up" for i in st["instances"] if i["node"] == nodes[0].node_id)
    assert nodes[1].proc.wait(10) == -9
    assert nodes[1].stop()  # a killed node leaves its shared memory; stop() removes it


def test_a_stalled_node_is_declared_failed_after_missed_beats(cluster):
    """A stopped (not dead) supervisor closes no socket: the beats it misses tell."""
    ctl, nodes = cluster
    victim = nodes[1]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        st = ctl.wait_for(lambda st: any(n["id"] == victim.node_id and n["state"] == "failed" for n in st["nodes"]))
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    event = [e for e in st["events"] if e["event"] == "node_failed" and e["node"] == victim.node_id][-1]
    assert event["why"] == "no heartbeat" and 30 <= event["silence_ms"] < 200, event   # 3 missed 10 ms beats
    ctl.wait_for(lambda st: any(n["id"] == victim.node_id and n["state"] == "up" for n in st["nodes"]))


def test_garbage_on_the_heartbeat_socket_is_counted_and_ignored(cluster):
    ctl, nodes = cluster
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.connect(ctl.heartbeats)
    try:
        time.sleep(0.3)  # PUB/SUB: let the connection settle so the frames are not dropped
        for frames in ([b"junk"], [b"H", b"not json"], [b"H", b"[]"], [b"H", b'{"node": 5}'], [b"Z", b"{}"],
                       [b"F", b'{"node": "x", "process": "nf0", "pid": "1", "exit": 0}']):
            pub.send_multipart(frames)
        st = ctl.wait_for(lambda st: st["controller"]["counters"]["bad_frames"] >= 6)
    finally:
        pub.close()
    assert st["controller"]["counters"]["bad_frames"] == 6
    assert len(st["nodes"]) == 2 and all(n["state"] == "up" for n in st["nodes"])


def test_bad_controller_config_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[controller]\nmiss_limit = 0\n")
    out = subprocess.run([sys.executable, "-m", "deft.runtime.controller.main", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "[controller] miss_limit: must be >= 1, got 0" in out.stderr
