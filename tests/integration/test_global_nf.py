"""The portscan NF on a 3-node cluster whose global state is Raft (issue 4, G4).

A controller and three nodes (replication on, every node a Raft member,
portscan on 2 instances per node: 6 pairs, the buckets spread over all
three nodes). A small sender plays a scanner (one source, one packet to each
of ``N_SCAN`` distinct (address, port) pairs) and normal clients (one flow
each, several packets); a second round later sends another packet on every
flow. Checked:

* every node's replica holds the scanner's window with exactly ``N_SCAN``
  members: the sequential answer, though the pairs were counted by six
  instances on three nodes (G4), read on each node with ``global_get``;
* the scanner got at most ``threshold`` distinct pairs through, and nothing
  of the second round (blocked on every instance); normal flows lose nothing.

``test_..._leader_node_killed`` kills -9 the node of the Raft leader mid-scan
(leadership is moved off node1 first: node1 is the ingress), restarts it from
its disk, and checks the same equality on all three (the restarted one too).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_UDP
from deft.runtime.params import ipv4_to_int, split_host_port
from deft.tools.ctl import NoAnswer, query
from deft.tools.localnode import LocalCluster

pytestmark = pytest.mark.slow

THRESHOLD, N_SCAN, N_CLIENTS, CLIENT_PKTS = 20, 60, 30, 4
SCANNER, VICTIM, SERVER = "192.0.2.66", "10.0.0.5", "10.0.0.9"
IP_SRC, L4_DPORT = 8 + 14 + 12, 8 + 14 + 20 + 2     # offsets in a VXLAN datagram (no IP options)


def client_ip(k: int) -> str:
    return f"10.1.0.{k + 1}"


class Traffic:
    """Send VXLAN frames to the ingress; receive what the egress sends back."""

    def __init__(self, cluster: LocalCluster):
        self.to = split_host_port(cluster.ingress.partition("://")[2])
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.rx.bind(split_host_port(cluster.egress.partition("://")[2]))
        self.rx.setblocking(False)
        self.got: list[bytes] = []

    def send(self, src: str, sport: int, dst: str, dport: int, tag: bytes) -> None:
        frame = build_frame(ipv4_to_int(src), ipv4_to_int(dst), IPPROTO_UDP, sport, dport, tag * 16)
        self.tx.sendto(vxlan_wrap(frame, 100), self.to)
        time.sleep(0.0005)
        self.drain()

    def drain(self, quiet_s: float = 0.0) -> None:
        deadline = time.monotonic() + quiet_s
        while True:
            try:
                self.got.append(self.rx.recv(4096))
                deadline = time.monotonic() + quiet_s
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.005)

    def received(self, src: str, tag: bytes) -> list[int]:
        """Destination ports of what came back from ``src`` in round ``tag``."""
        ip = socket.inet_aton(src)
        return [int.from_bytes(d[L4_DPORT:L4_DPORT + 2], "big") for d in self.got
                if d[IP_SRC:IP_SRC + 4] == ip and tag * 16 in d]

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


def scan_round(traffic: Traffic, tag: bytes, ports, with_clients: bool = True) -> None:
    clients = iter([(k, n) for n in range(CLIENT_PKTS) for k in range(N_CLIENTS)] if with_clients else [])
    for port in ports:
        traffic.send(SCANNER, 40000, VICTIM, port, tag)
        for _ in range(2):
            k = next(clients, None)
            if k is not None:
                traffic.send(client_ip(k[0]), 5000 + k[0], SERVER, 443, tag)
    for k, _ in clients:
        traffic.send(client_ip(k), 5000 + k, SERVER, 443, tag)


def raft(node) -> dict:
    return node.status(1000)["raft"]


def wait_leader(cluster: LocalCluster, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for k, node in enumerate(cluster.nodes):
                if raft(node)["role"] == "leader":
                    return k
        except NoAnswer:
            pass
        time.sleep(0.05)
    raise AssertionError("no Raft leader")


def windows(cluster: LocalCluster) -> list[int]:
    """The scanner's count on every node's replica."""
    out = []
    for node in cluster.nodes:
        value = query(node.control, {"cmd": "global_get", "key": f"portscan/{SCANNER}"}, 3000)["value"]
        out.append(len(value) if isinstance(value, dict) else 0)
    return out


def wait_windows(cluster: LocalCluster, want: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = windows(cluster)
        if got == [want] * len(got):
            return got
        time.sleep(0.1)
    return got


def other_failures(cluster: LocalCluster, victim: str) -> list[str]:
    """Nodes the controller declared failed besides ``victim``: false suspicions, i.e. a second failure."""
    return [e["node"] for e in cluster.ctl.status()["events"] if e["event"] == "node_failed" and e["node"] != victim]


def worker_counters(cluster: LocalCluster) -> dict[str, int]:
    total: dict[str, int] = {}
    for node in cluster.nodes:
        for inst in node.status()["instances"]:
            for name, value in inst.get("counters", {}).items():
                if isinstance(value, int):
                    total[name] = total.get(name, 0) + value
    return total


@pytest.fixture
def cluster(tmp_path):
    # Failure detection in 300 ms, not 100: on a busy machine the supervisors stalled 100-660 ms at
    # times (Raft compaction's fsyncs, every 10 entries here and on every member at once, or just
    # starved), the controller declared a live node failed next to the real kill, and two failures
    # within one take-over lost what only those two nodes held (the fence that waits for an election
    # is covered by test_global_exactly_once).
    cluster = LocalCluster(tmp_path, "gn", 3, replicate=True, kind="portscan", miss_limit=30,
                           params={"threshold": THRESHOLD, "window_s": 600},
                           raft={"snapshot_every": 10})   # compaction, and InstallSnapshot to the restarted node
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


def test_portscan_counts_are_global_and_the_scanner_is_blocked_everywhere(cluster):
    wait_leader(cluster)
    traffic = Traffic(cluster)
    try:
        scan_round(traffic, b"A", range(1000, 1000 + N_SCAN))
        traffic.drain(1.5)           # past the NFs' refresh (1 s of packet time) before round B
        scan_round(traffic, b"B", range(1000, 1000 + N_SCAN))
        traffic.drain(1.0)
    finally:
        traffic.close()
    assert wait_windows(cluster, N_SCAN) == [N_SCAN] * 3
    passed = traffic.received(SCANNER, b"A")
    assert len(set(passed)) <= THRESHOLD and passed, passed
    assert traffic.received(SCANNER, b"B") == []
    for k in range(N_CLIENTS):
        assert len(traffic.received(client_ip(k), b"A")) == CLIENT_PKTS
        assert len(traffic.received(client_ip(k), b"B")) == CLIENT_PKTS
    counters = worker_counters(cluster)
    assert counters.get("global_batches", 0) > 0 and counters.get("global_timeouts", 0) == 0
    digests = {raft(n)["digest"] for n in cluster.nodes}
    assert len(digests) == 1


def test_portscan_counts_stay_global_when_the_raft_leader_node_is_killed(cluster):
    leader = wait_leader(cluster)
    if leader == 0:  # node1 takes the traffic: hand leadership to node2 before killing the leader's node
        query(cluster.nodes[0].control, {"cmd": "raft_transfer", "to": 2}, 3000)
        deadline = time.monotonic() + 5
        while (leader := wait_leader(cluster)) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert leader != 0
    traffic = Traffic(cluster)
    try:
        scan_round(traffic, b"A", range(1000, 1000 + N_SCAN // 2))
        victim = cluster.nodes[leader]
        victim_id = victim.node_id
        victim.status()
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(10)
        scan_round(traffic, b"C", range(1000 + N_SCAN // 2, 1000 + N_SCAN))
        traffic.drain(0.5)
        survivors = [n for k, n in enumerate(cluster.nodes) if k != leader]
        assert [len(query(n.control, {"cmd": "global_get", "key": f"portscan/{SCANNER}"})["value"])
                for n in survivors] == [N_SCAN] * 2 or wait_windows_of(survivors) == [N_SCAN] * 2, \
            f"also declared failed: {other_failures(cluster, victim_id)}"
        cluster.restart(leader)
        cluster.nodes[leader].wait_ready()
        assert wait_windows(cluster, N_SCAN, timeout=20) == [N_SCAN] * 3
        traffic.drain(1.5)
        scan_round(traffic, b"B", range(1000, 1000 + N_SCAN), with_clients=False)
        traffic.drain(1.0)
    finally:
        traffic.close()
    assert wait_windows(cluster, N_SCAN) == [N_SCAN] * 3
    assert traffic.received(SCANNER, b"B") == []
    digests = {raft(n)["digest"] for n in cluster.nodes}
    assert len(digests) == 1
    rafts = [raft(n) for n in cluster.nodes]
    assert any(r["snapshot"] > 0 for r in rafts), rafts   # compaction ran (and the digests still agree)
    # normal flows lost nothing through the failover (a node crash may release an in-doubt batch twice)
    short = [(k, tag) for k in range(N_CLIENTS) for tag in (b"A", b"C")
             if len(traffic.received(client_ip(k), tag)) < CLIENT_PKTS]
    counters = {k: v for k, v in worker_counters(cluster).items() if v and not k.endswith("_ns")}
    assert not short, (f"clients short in rounds {short}; {counters}; "
                       f"also declared failed: {other_failures(cluster, victim_id)}")


def wait_windows_of(nodes, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = []
        for node in nodes:
            value = query(node.control, {"cmd": "global_get", "key": f"portscan/{SCANNER}"}, 3000)["value"]
            got.append(len(value) if isinstance(value, dict) else 0)
        if got == [N_SCAN] * len(nodes) or time.monotonic() >= deadline:
            return got
        time.sleep(0.1)
