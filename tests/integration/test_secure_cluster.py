"""A secure cluster (``[security] keys``: CURVE on every socket) forwards and fails over as a plain one;
deft-ctl with the operator key is served; without it, and a plain ZeroMQ peer on a worker's
sockets, get nothing and change nothing."""

from __future__ import annotations

import time

import pytest
import zmq

from deft.runtime import sockets
from deft.runtime.control import NoAnswer, query
from deft.runtime.security import load_keys
from deft.runtime.sockets import make_socket, send_nowait
from deft.tools.ctl import main as ctl_main
from deft.tools.drills import healthy, kill_primary_worker, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

from .test_failover import IN_FLIGHT_PER_KILL, assert_no_harm

pytestmark = pytest.mark.slow


@pytest.fixture
def secure(tmp_path):
    keys = tmp_path / "keys"
    cluster = LocalCluster(tmp_path, "sc", n_nodes=3, replicate=True, keys=keys)
    sockets.use_keys(load_keys(keys, "operator", operator=True))   # this test speaks as the operator
    try:
        yield cluster.wait_ready(), keys
    finally:
        sockets.use_keys(load_keys(keys, "operator", operator=True))
        try:
            left = cluster.stop()
        finally:
            sockets.use_keys(None)
        assert not any(left.values()), left


def test_secure_cluster_forwards_fails_over_and_lets_no_stranger_in(secure, tmp_path, capsys):
    cluster, keys = secure
    gen = start_traffic(cluster, tmp_path / "report.json", 500, 1000, 4.0)
    try:
        time.sleep(1.5)
        kill_primary_worker(cluster, 1)
        wait_for(cluster, healthy, timeout=10)
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    assert report["received"] > 3000
    assert_no_harm(report, cluster, duplicates_allowed=IN_FLIGHT_PER_KILL)

    ctl = cluster.ctl.control
    node = cluster.nodes[1]
    assert ctl_main(["--keys", str(keys), "--controller", ctl, "status"]) == 0
    assert "ACTIVE since" in capsys.readouterr().out
    # no key (a plain peer), and an operator key on a worker's data socket: nothing at all
    sockets.use_keys(None)
    assert ctl_main(["--timeout-ms", "500", "--controller", ctl, "status"]) == 1
    assert "no answer" in capsys.readouterr().err
    with pytest.raises(NoAnswer):
        query(node.control, {"cmd": "kill", "target": "node"}, 500)
    sockets.use_keys(load_keys(keys, "operator", operator=True))
    before = node.status()
    fabric = cluster.configs[1].read_text().split('fabric = "')[1].split('"')[0]
    for keys_used in (None, load_keys(keys, "operator", operator=True)):
        sockets.use_keys(keys_used)
        push = make_socket(zmq.Context.instance(), zmq.PUSH, connect=fabric)
        send_nowait(push, [b"\x01", b"forged packets"])   # refused at the handshake: never blocking
        time.sleep(0.3)
        push.close()
    sockets.use_keys(load_keys(keys, "operator", operator=True))
    after = node.status()
    assert after["node"]["pid"] == before["node"]["pid"]
    assert [i["pid"] for i in after["instances"]] == [i["pid"] for i in before["instances"]]
    read = [sum(i["counters"].get(k, 0) for i in st["instances"] for k in ("remote_messages", "remote_bad_frames"))
            for st in (before, after)]
    assert read[0] > 0 and read[0] == read[1]   # nothing got as far as being read (a plain frame would be a bad frame)
