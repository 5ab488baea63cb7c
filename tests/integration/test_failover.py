"""Failover under traffic on a 3-node loopback cluster (controller + 3 NAT nodes, replication on).

Each test starts traffic (1000 flows, half TCP with handshakes), SIGKILLs
something mid-run, and checks the generator's report: no loss (G1), per-flow
order (G2), no duplicate for a worker kill and at most the in-doubt batches
for a node kill (G3), and every flow kept its NAT mapping (G5: the receiver
sees one translated source per flow and direction). Then the controller must
show every pair with a live primary and a secondary again.
"""

from __future__ import annotations

import time

import orjson
import pytest

from deft.runtime.procs.ingress import BURST
from deft.tools.ctl import query
from deft.tools.drills import healthy, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster, processes

pytestmark = pytest.mark.slow

FLOWS, RATE, DURATION_S, KILL_AT_S = 1000, 3000, 4.0, 1.5


def running_cluster(tmp_path, tag: str):
    """3 replicated NAT nodes and a controller, ready; stopped (nothing left in /dev/shm) after."""
    cluster = LocalCluster(tmp_path, tag, n_nodes=3, replicate=True)
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, "fo")


def under_traffic(cluster: LocalCluster, tmp_path, kill) -> dict:
    """Run the generator, call ``kill(status)`` KILL_AT_S into it, return the report."""
    gen = start_traffic(cluster, tmp_path / "report.json", FLOWS, RATE, DURATION_S)
    try:
        time.sleep(KILL_AT_S)
        kill(controller_status(cluster))
    finally:
        report = traffic_report(gen, tmp_path / "report.json")
    return report


def controller_status(cluster: LocalCluster) -> dict:
    return query(cluster.ctl.control, {"cmd": "status"}, 3000)


def drill(cluster: LocalCluster, what: str, ident: str) -> None:
    reply = query(cluster.ctl.control, {"cmd": "fail", "what": what, "id": ident}, 3000)
    assert reply.get("ok") is not False and reply.get("killed") == ident, reply


def primary_of_pair(st: dict, pair: int) -> str:
    return next(p["primary"] for p in st["pairs"] if p["pair"] == pair)


def assert_healthy_again(cluster: LocalCluster, dead_node: str | None = None) -> dict:
    """Every pair served by a live instance and replicated to another node (the controller's view)."""
    def on_two_nodes(st: dict) -> bool:
        return healthy(st) and all(p["primary"].split("/")[0] != p["secondary"].split("/")[0] for p in st["pairs"])

    try:
        st = wait_for(cluster, on_two_nodes, timeout=10)
    except TimeoutError:
        raise AssertionError(controller_status(cluster)["pairs"]) from None
    assert len(st["pairs"]) == 6
    if dead_node is not None:
        assert all(dead_node not in (p["primary"].split("/")[0], p["secondary"].split("/")[0]) for p in st["pairs"])
    return st


#: A worker SIGKILLed while it sends its own output may send the datagram it was sending twice: the
#: kernel sends it and the kill lands as the syscall returns, before the worker marks it sent in its
#: egress ring; the supervisor then sends what the ring still holds (Supervisor.finish_releases). At
#: most one datagram per killed worker: the contract (docs/ARCHITECTURE.md, G3). Marking it sent
#: first would lose it instead when the kill lands between the mark and the send.
IN_FLIGHT_PER_KILL = 1


def assert_no_harm(report: dict, cluster: LocalCluster, duplicates_allowed: int = 0) -> None:
    seen = {k: report.get(k) for k in ("lost", "reordered", "duplicated", "remapped_flows", "lost_sample",
                                       "duplicated_sample")}
    ok = (report["lost"] == 0                                   # G1
          and report["reordered"] == 0                          # G2
          and report["duplicated"] <= duplicates_allowed        # G3
          and report["remapped_flows"] == 0)                    # G5: NAT mappings kept
    if not ok:
        counters = node_counters(cluster)
        events = controller_status(cluster)["events"]
        (cluster.tmp / "counters.json").write_bytes(orjson.dumps([seen, counters, events],
                                                                 option=orjson.OPT_INDENT_2))
        raise AssertionError((seen, counters))


def node_counters(cluster: LocalCluster) -> dict:
    """What the live nodes counted, for a failure message."""
    out = {}
    for node in cluster.nodes:
        try:
            st = node.status(1000)
        except Exception as exc:  # noqa: BLE001 - a killed node does not answer
            out[node.node_id] = repr(exc)
            continue
        out[node.node_id] = {
            "units": [u["counters"] for u in st["units"]],
            "instances": [{k: v for k, v in {**i["counters"], **(i.get("replication") or {})}.items() if v}
                          for i in st["instances"]]}
    return out


def takeovers(st: dict) -> list[dict]:
    return [e for e in st["events"] if e["event"] == "routes_pushed" and e.get("takeovers")]


def test_killing_a_primary_worker_loses_nothing(cluster, tmp_path):
    victim = {}

    def kill(st):
        victim["id"] = primary_of_pair(st, 2)
        drill(cluster, "nf", victim["id"])

    assert_no_harm(under_traffic(cluster, tmp_path, kill), cluster, duplicates_allowed=IN_FLIGHT_PER_KILL)
    st = assert_healthy_again(cluster)
    assert primary_of_pair(st, 2) != victim["id"] and takeovers(st)[-1]["takeovers"] == [2]


def test_killing_a_secondary_worker_loses_nothing(cluster, tmp_path):
    def kill(st):
        drill(cluster, "nf", next(p["secondary"] for p in st["pairs"] if p["pair"] == 0))

    # the secondary of pair 0 is the primary of another pair: it sends output too
    assert_no_harm(under_traffic(cluster, tmp_path, kill), cluster, duplicates_allowed=IN_FLIGHT_PER_KILL)
    assert_healthy_again(cluster)


def test_killing_two_workers_on_different_nodes_at_once(cluster, tmp_path):
    def kill(st):
        first, second = primary_of_pair(st, 2), primary_of_pair(st, 5)   # on node 2 and node 3
        assert first.split("/")[0] != second.split("/")[0]
        drill(cluster, "nf", first)
        drill(cluster, "nf", second)

    assert_no_harm(under_traffic(cluster, tmp_path, kill), cluster, duplicates_allowed=2 * IN_FLIGHT_PER_KILL)
    assert_healthy_again(cluster)


def test_killing_a_whole_node_loses_nothing(cluster, tmp_path):
    node = cluster.nodes[2].node_id

    def kill(st):
        drill(cluster, "node", node)

    # a node crash may release its in-doubt batches again: at most the 2PC window per pair it served
    report = under_traffic(cluster, tmp_path, kill)
    assert_no_harm(report, cluster, duplicates_allowed=2 * 4 * 64)
    assert_healthy_again(cluster, dead_node=node)


def test_killing_the_ingress_nodes_io_loses_at_most_its_burst_in_hand(cluster, tmp_path):
    """The io does the ingress, the stamping unit and the egress: its standby takes over, the unit
    stamps again what was in hand (journal, input ring in shared memory) and resends what it had
    handed to ZeroMQ (sent log); the datagrams read from the socket and not yet in the unit's ring
    are lost, the datagram being sent may go twice. That burst is a datagram or two at 3 kpps when
    the io keeps up, but grows with the time the io was off the CPU (19, then 38 in full `make test`
    runs on two cores, Dec 2026): so what is asserted is its shape, one run of consecutive datagrams
    of at most BURST, not a count that depends on the scheduler. A known loss (ARCHITECTURE, weak
    spots: the MSG_PEEK/SO_PEEK_OFF read that would close it), not noise."""
    def kill(st):
        reply = query(cluster.nodes[0].control, {"cmd": "kill", "target": "io"}, 3000)
        assert reply.get("ok"), reply

    report = under_traffic(cluster, tmp_path, kill)
    assert report["lost_runs"] <= 1 and report["lost"] <= BURST, report["lost_sample"]
    assert_no_harm(dict(report, lost=0), cluster, duplicates_allowed=1)
    assert_healthy_again(cluster)


def pause_nodes(nodes, seconds: float) -> None:
    """SIGSTOP every process of ``nodes`` (supervisor included) for ``seconds``, then SIGCONT."""
    import os
    import signal

    pids = [p for node in nodes for p in [node.pid, *(q["pid"] for q in processes(node.status()) if q.get("pid"))]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_two_nodes_paused_together_lose_nothing_and_keep_every_mapping(cluster, tmp_path):
    """Both replicas of some pairs suspected at once (a stall of two nodes, 400 ms). Without a grace
    those pairs restarted fresh on the third node: 104 packets lost and 6 NAT mappings changed in one
    run. Now they wait ([controller] fresh_grace_ms, 500) and stay with their primaries, which come
    back as the same processes with their state."""
    report = under_traffic(cluster, tmp_path, lambda st: pause_nodes(cluster.nodes[1:], 0.4))
    assert_no_harm(report, cluster, duplicates_allowed=2 * 4 * 64)
    st = controller_status(cluster)
    # usually both are found silent; the second may resume first while the controller pushes routes
    assert sum(e["event"] == "node_failed" for e in st["events"]) >= 1, st["events"]
    assert_healthy_again(cluster)


def test_a_node_paused_past_its_failure_detection_loses_nothing(cluster, tmp_path):
    """A false suspicion (a long stall: GC, overload, a VM paused): every process of node 3 is
    SIGSTOPped for 400 ms (detection takes 10 x 10 ms), so its pairs are taken over while its workers
    still think they are primaries, then it resumes. A stale primary cannot release: release needs
    its secondary's vote, and that secondary has become the primary. The resumed node gets the new
    routes and steps down; nothing is lost, reordered or remapped."""
    node = cluster.nodes[2]
    report = under_traffic(cluster, tmp_path, lambda st: pause_nodes([node], 0.4))
    st = controller_status(cluster)
    assert any(e["event"] == "node_failed" and e["node"] == node.node_id for e in st["events"]), st["events"]
    assert_no_harm(report, cluster, duplicates_allowed=2 * 4 * 64)
    assert_healthy_again(cluster)
