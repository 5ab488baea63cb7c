"""Network partitions: a controller and three NAT nodes in their own network namespaces, each pair of
hosts joined by its own link (tools/netmesh.py), and links cut (link down) and healed under traffic.

- a node cut off from the controller only: it is failed over (its beats stop), its old primaries get
  no more packets and release nothing new (no split brain); healed, it takes roles again;
- a node cut off from everyone: the same, and the cut-off side releases nothing while cut;
- two nodes cut from each other, both still beating: nothing fails over; the pairs that span the cut
  stall (2PC cannot finish, the ingress cannot reach the other's workers) and go on when it heals.

Every case keeps G1, G2, G5 for the traffic that reached the live ingress, and G3 up to the in-doubt
batches a failed-over node may have released (as for a node kill). The namespaces and addresses
(10.77.0.x, management 10.78.0.x) also show that nothing assumes loopback. Root and `ip` only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deft.tools.drills import healthy, traffic_report, wait_for
from deft.tools.localnode import LocalController, LocalNode, node_config, to_toml, write_config

from .test_failover import assert_no_harm

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip")]

FLOWS, RATE, DURATION_S, CUT_AT_S, CUT_FOR_S = 300, 1000, 5.0, 1.2, 2.0
IN_DOUBT = 2 * 4 * 64   # a failed-over node's in-doubt batches, at most (as for a node kill)


class MeshCluster:
    """The controller on host ``ctl``, nodes on ``n1``..``n3`` (n1 takes the traffic), the traffic
    generator on ``gen`` (linked to the nodes only)."""

    def __init__(self, tmp: Path):
        from deft.tools.netmesh import Mesh

        self.tmp = tmp
        hosts = ["ctl", "n1", "n2", "n3", "gen"]
        links = [("ctl", n) for n in ("n1", "n2", "n3")] + [("n1", "n2"), ("n1", "n3"), ("n2", "n3")] \
            + [("gen", n) for n in ("n1", "n2", "n3")]
        self.mesh = Mesh(hosts, links)
        a = self.mesh.addr
        self.egress = f"udp://{a['gen']}:4790"
        self.nodes: list[LocalNode] = []
        self.ctl = None
        try:
            cfg = {"controller": {"control": f"tcp://{a['ctl']}:7000", "heartbeats": f"tcp://{a['ctl']}:7001",
                                  "heartbeat_ms": 10, "miss_limit": 10, "expect_nodes": 3}}
            (tmp / "controller.toml").write_text(to_toml(cfg))
            self.ctl = LocalController.start(tmp / "controller.toml", tmp / "controller.log",
                                             prefix=self.mesh.wrap("ctl"))
            for k in (1, 2, 3):
                host = f"n{k}"
                node_id = f"pt{os.getpid()}{host}"
                node = {"control": f"tcp://{a[host]}:7101", "controller": [cfg["controller"]["heartbeats"]],
                        "fabric": f"tcp://{a[host]}:7210", "replication": f"tcp://{a[host]}:7310"}
                ingress = {"listen": f"udp://{a[host]}:4789"} if k == 1 else {"listen": "none"}
                conf = node_config(node_id, "nat", 2, {"public_ip": "203.0.113.1"}, node=node, ingress=ingress,
                                   egress={"send_to": self.egress}, nf={"replicate": True})
                path = write_config(tmp / f"{node_id}.toml", conf)
                self.nodes.append(LocalNode.start(path, tmp / f"{node_id}.log", prefix=self.mesh.wrap(host)))
        except BaseException:
            self.stop()
            raise

    @property
    def ingress(self) -> str:
        return self.nodes[0].ingress

    def wait_ready(self) -> "MeshCluster":
        for node in self.nodes:
            node.wait_ready()
        wait_for(self, healthy, timeout=20)
        return self

    def traffic(self, report: Path) -> subprocess.Popen:
        return self.mesh.run("gen", [sys.executable, "-m", "deft.tools.trafficgen", "--to", self.ingress,
                                     "--listen", self.egress, "--json", str(report), "--quiet", "--flows", str(FLOWS),
                                     "--rate", str(RATE), "--duration", str(DURATION_S)])

    def released(self, k: int) -> dict[str, int]:
        """Per worker of node ``k`` (0-based): what it released so far (over the management link)."""
        st = self.nodes[k].status(2000)
        return {i["id"]: i["counters"].get("released", 0) for i in st["instances"]}

    def released_once_settled(self, k: int, timeout: float = 3.0) -> dict[str, int]:
        """``released`` once two reads 0.3 s apart agree: counters reach shared memory up to 150 ms
        late, and a starved worker may still release a batch whose vote came before the cut."""
        deadline, last = time.monotonic() + timeout, self.released(k)
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.released(k)
            if now == last:
                return now
            last = now
        raise AssertionError(f"node {k} kept releasing while cut off: {last}")

    def stop(self) -> dict[str, list[str]]:
        left: dict[str, list[str]] = {}
        try:
            if self.ctl is not None:
                self.ctl.stop()
            for node in self.nodes:
                if node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in self.nodes:
                left[node.node_id] = node.stop(learn_pids=False)
        finally:
            self.mesh.close()
        return left


@pytest.fixture
def mesh_cluster(tmp_path):
    cluster = MeshCluster(tmp_path)
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


def primaries_on(st: dict, node_id: str) -> list[int]:
    return [p["pair"] for p in st["pairs"] if p["primary"].startswith(node_id + "/")]


def under_cut(cluster: MeshCluster, tmp_path: Path, cut, heal, during=None) -> dict:
    """Traffic; ``cut()`` at CUT_AT_S, ``during()`` while cut, ``heal()`` CUT_FOR_S after the cut (or
    when ``during`` returns, if later); the generator's report."""
    gen = cluster.traffic(tmp_path / "report.json")
    try:
        time.sleep(CUT_AT_S)
        cut_at = time.monotonic()
        cut()
        try:
            if during is not None:
                during()
            time.sleep(max(0.0, cut_at + CUT_FOR_S - time.monotonic()))
        finally:
            heal()
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    print(f"sent {report['sent']} lost {report['lost']} duplicated {report['duplicated']} reordered "
          f"{report['reordered']} remapped {report['remapped_flows']} latency {report['latency_us']}")
    return report


def test_a_node_cut_off_from_the_controller_is_failed_over_without_split_brain(mesh_cluster, tmp_path):
    c, mesh = mesh_cluster, mesh_cluster.mesh
    victim = c.nodes[1].node_id
    before = wait_for(c, healthy)
    lost_pairs = primaries_on(before, victim)
    assert lost_pairs
    seen: dict = {}

    def during():
        st = wait_for(c, lambda s: not set(primaries_on(s, victim)), timeout=5)   # failed over
        assert all(p["primary"] for p in st["pairs"])
        seen["events"] = st["events"]
        seen["a"] = c.released_once_settled(1)
        time.sleep(0.6)
        seen["b"] = c.released(1)                      # the cut-off primaries released nothing new

    report = under_cut(c, tmp_path, lambda: mesh.cut("ctl", "n2"), lambda: mesh.heal("ctl", "n2"), during)
    assert seen["a"] == seen["b"], seen
    assert_no_harm(report, c, duplicates_allowed=IN_DOUBT)
    st = wait_for(c, healthy, timeout=15)              # healed: the node takes roles again
    failed = [e for e in seen["events"] if e["event"] == "node_failed" and e["node"] == victim]
    assert failed and failed[0]["why"] == "no heartbeat", seen["events"]
    assert {n["id"]: n["state"] for n in st["nodes"]}[victim] == "up"


def test_a_node_cut_off_from_everyone_stops_releasing(mesh_cluster, tmp_path):
    c, mesh = mesh_cluster, mesh_cluster.mesh
    victim = c.nodes[2].node_id
    assert primaries_on(wait_for(c, healthy), victim)
    cut: list = []
    seen: dict = {}

    def during():
        wait_for(c, lambda s: not set(primaries_on(s, victim)), timeout=5)
        seen["a"] = c.released_once_settled(2)
        time.sleep(0.6)
        seen["b"] = c.released(2)

    def heal():
        for a, b in cut:
            mesh.heal(a, b)

    report = under_cut(c, tmp_path, lambda: cut.extend(mesh.isolate("n3")), heal, during)
    assert seen["a"] == seen["b"], seen              # the isolated side releases nothing
    assert_no_harm(report, c, duplicates_allowed=IN_DOUBT)
    wait_for(c, healthy, timeout=15)


def test_two_nodes_cut_from_each_other_stall_and_go_on(mesh_cluster, tmp_path):
    c, mesh = mesh_cluster, mesh_cluster.mesh
    before = wait_for(c, healthy)
    report = under_cut(c, tmp_path, lambda: mesh.cut("n1", "n2"), lambda: mesh.heal("n1", "n2"))
    assert_no_harm(report, c)                        # nothing failed over: nothing in doubt, nothing twice
    after = wait_for(c, healthy, timeout=10)
    assert [p["primary"] for p in after["pairs"]] == [p["primary"] for p in before["pairs"]]
    lat = report["latency_us"]
    assert lat["max"] > 0.5 * CUT_FOR_S * 1e6, lat   # the pairs across the cut waited for it to heal
