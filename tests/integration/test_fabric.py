"""Two nodes: the ingress node's switch routes half the buckets to the other node's workers over ZMQ
(straight to each worker's PULL at ``[node] fabric`` + its index)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

from deft.tools.ctl import query
from deft.runtime.params import endpoint_of
from deft.tools.localnode import LocalNode, consecutive_ports, free_port, node_config, write_config

from .conftest import run_trafficgen

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(tmp_path):
    egress = f"udp://127.0.0.1:{free_port()}"       # both nodes send to the generator's one listener
    nodes = []
    for n in (1, 2):
        node_id = f"f{os.getpid()}n{n}"
        fabric = f"tcp://127.0.0.1:{consecutive_ports(2)}"
        conf = node_config(node_id, "nat", 2, {"public_ip": f"203.0.113.{n}"}, node={"fabric": fabric},
                           egress={"send_to": egress})
        nodes.append(LocalNode.start(write_config(tmp_path / f"{node_id}.toml", conf), tmp_path / f"{node_id}.log"))
    try:
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        left = {node.node_id: node.stop() for node in nodes}
        assert not any(left.values()), left


def fabric_of(node: LocalNode) -> str:
    import tomllib

    return tomllib.loads(node.config_path.read_text())["node"]["fabric"]


def routes_request(a: LocalNode, b: LocalNode, epoch: int) -> dict:
    return {"cmd": "set_routes", "epoch": epoch,
            "nodes": [[a.node_id, fabric_of(a)], [b.node_id, fabric_of(b)]],
            "pairs": [[0, 0, -1, -1], [0, 1, -1, -1], [1, 0, -1, -1], [1, 1, -1, -1]],
            "buckets": (np.arange(4096) % 4).tolist()}


def test_packets_cross_to_the_other_node_without_loss_or_reordering(two_nodes, tmp_path):
    a, b = two_nodes
    for node in (a, b):  # routes are cluster-wide: a worker serves only the pairs they give it
        reply = query(node.control, routes_request(a, b, epoch=2))
        assert reply["ok"], reply
    report = run_trafficgen(a, tmp_path, "--flows", "200", "--rate", "4000", "--packets", "12000")
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    sa, sb = a.status(), b.status()
    assert sa["routes"]["epoch"] == 2 and sa["routes"]["nodes"] == [a.node_id, b.node_id]
    remote = sa["units"][0]["counters"]["sent_remote"]
    assert 3000 < remote < 9000                      # about half the buckets live on node 2
    assert sum(i["counters"]["remote_packets"] for i in sb["instances"]) == remote
    assert sum(i["counters"]["released"] for i in sb["instances"]) == remote
    assert sum(i["counters"]["released"] for i in sa["instances"]) == 12000 - remote


def test_stale_or_inconsistent_routes_are_refused(two_nodes):
    a, b = two_nodes
    assert query(a.control, routes_request(a, b, epoch=5))["ok"]
    stale = query(a.control, routes_request(a, b, epoch=4))
    assert not stale["ok"] and "not newer than 5" in stale["error"]
    bad = routes_request(a, b, epoch=6)
    bad["pairs"][0] = [0, 0, 0, 1]                   # primary and secondary on one node
    assert "same node" in query(a.control, bad)["error"]
    bad = routes_request(a, b, epoch=6)
    bad["buckets"] = [9] * 4096
    assert "buckets must be" in query(a.control, bad)["error"]
    assert a.status()["routes"]["epoch"] == 5


def bad_frames(node: LocalNode) -> int:
    return node.status()["instances"][0]["counters"]["remote_bad_frames"]


def test_garbage_on_the_fabric_socket_is_counted_and_ignored(two_nodes, tmp_path):
    a, b = two_nodes
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.linger = 2000  # let the frames out before the socket closes (bounded)
    push.connect(endpoint_of(fabric_of(b), 0))     # worker 0's packet socket
    try:
        for frames in ([b"junk"], [b"P", b"{}", b""], [b"P", b'{"epoch": 1, "instance": 0, "n": 2, "width": 70}',
                                                          b"x" * 139],
                       [b"P", b'{"epoch": 1, "instance": 9, "n": 1, "width": 64}', b"\x00" * 64],
                       [b"P", b'{"epoch": 1, "instance": 0, "n": 1, "width": 64}', b"\x00" * 64]):  # unstamped
            push.send_multipart(frames)
    finally:
        push.close()
    deadline = time.monotonic() + 5
    while bad_frames(b) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bad_frames(b) == 5
    assert all(query(node.control, routes_request(a, b, epoch=2))["ok"] for node in (a, b))
    report = run_trafficgen(a, tmp_path, "--flows", "50", "--rate", "2000", "--packets", "2000")
    assert (report["lost"], report["reordered"]) == (0, 0)
