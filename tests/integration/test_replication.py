"""Replication in normal operation: every batch reaches the other node's secondary by 2PC before release."""

from __future__ import annotations

import os
import socket
import time

import pytest

from deft.tools.localnode import (
    LocalController,
    LocalNode,
    controller_config,
    free_port,
    node_config,
    to_toml,
    write_config,
)

from .conftest import run_trafficgen

pytestmark = pytest.mark.slow


def free_port_pair() -> int:
    """A port p with p + 1 free too (worker i binds the replication base port + i)."""
    for _ in range(50):
        p = free_port(socket.SOCK_STREAM)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def replicated_cluster(tmp_path):
    cfg = controller_config(heartbeat_ms=10, miss_limit=10)
    (tmp_path / "controller.toml").write_text(to_toml(cfg))
    ctl = LocalController.start(tmp_path / "controller.toml", tmp_path / "controller.log")
    egress = f"udp://127.0.0.1:{free_port()}"
    nodes = []
    for n in (1, 2):
        node_id = f"rp{os.getpid()}n{n}"
        conf = node_config(node_id, "nat", 2, {"public_ip": f"203.0.113.{n}"}, egress={"send_to": egress},
                           node={"controller": cfg["controller"]["heartbeats"],
                                 "fabric": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                                 "replication": f"tcp://127.0.0.1:{free_port_pair()}"},
                           nf={"replicate": True},
                           **({"ingress": {"listen": "none"}} if n == 2 else {}))
        nodes.append(LocalNode.start(write_config(tmp_path / f"{node_id}.toml", conf), tmp_path / f"{node_id}.log"))
    try:
        for node in nodes:
            node.wait_ready()
        ctl.wait_for(lambda st: any(e["event"] == "routes_pushed" and e["ok"] and len(e["nodes"]) == 2
                                    for e in st["events"]))
        yield ctl, nodes
    finally:
        for node in nodes:
            node.stop()
        ctl.stop()


def test_batches_are_replicated_before_release_and_replicas_hold_the_flows(replicated_cluster, tmp_path):
    ctl, (a, b) = replicated_cluster
    report = run_trafficgen(a, tmp_path, "--flows", "200", "--rate", "3000", "--packets", "6000")
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    time.sleep(0.5)  # let the last commits and the counters settle
    instances = a.status()["instances"] + b.status()["instances"]
    primaries_flows = sum(i["counters"]["flows"] for i in instances)
    replica_flows = sum(i["replication"]["replica_flows"] for i in instances)
    assert primaries_flows == 200
    assert replica_flows == 200                       # every flow's state is also on the other node
    assert all(i["replication"]["repl_committed"] > 0 for i in instances)
    assert sum(i["replication"]["duplicates"] for i in instances) == 6000
    assert all(i["replication"]["repl_staged"] == 0 for i in instances)  # everything committed got out
