"""A downstream's ICMP errors never cost a good packet (issue 10, G1), end to end.

A 3-node replicated NAT cluster whose egress sockets are connected UDP
sockets. The sink is not there when the nodes come up, and it is restarted
once mid-run; traffic sent while nobody listens (its own flows, not measured)
draws ICMP port unreachable errors, which Linux reports on each egress's
*next* send. Before the fix the egress counted that next, good datagram as an
error and dropped it: one measured packet lost in 7 of 13 outside runs.

The measured traffic (mixed UDP and TCP flows with handshakes) pauses while
the sink is down: what is sent into a closed port is lost by the network, not
by DEFT. Checked: every measured packet arrives exactly once, in per-flow
order, every flow keeps its NAT mapping across the restart, and the egresses
stepped over the ICMP errors (``icmp_refused``) without a send error.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from deft.tools.localnode import LocalCluster
from deft.tools.trafficgen import (
    ReceiverProcess,
    Received,
    SendLog,
    TrafficSender,
    analyze,
    build_synthetic_plan,
    make_flows,
)
from deft.runtime.params import split_host_port

FLOWS, PACKETS, RATE = 200, 3000, 3000


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(tmp_path, "ic", 3, replicate=True)
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


def into_closed_port(cluster: LocalCluster, seed: int) -> None:
    """Traffic of flows of its own while nobody listens: every egress gets ICMP errors back."""
    plan = build_synthetic_plan(make_flows(60, 0.0, seed=seed), packets=300, frame_size=128, vni=9)
    with TrafficSender(plan, split_host_port(cluster.ingress.partition("://")[2])) as probe:
        probe.send(rate=3000)
    time.sleep(0.3)  # the outputs leave, the ICMPs come back and wait on the egress sockets


def merge(parts: list[Received]) -> Received:
    cols = [np.concatenate([getattr(p, c) for p in parts]) for c in ("ids", "sent_ns", "recv_ns", "src", "dst")]
    return Received(*cols, foreign=sum(p.foreign for p in parts), overflow=sum(p.overflow for p in parts))


def test_no_good_packet_is_lost_to_an_earlier_icmp_error(cluster):
    host, port = split_host_port(cluster.egress.partition("://")[2])
    plan = build_synthetic_plan(make_flows(FLOWS, 0.3, seed=5), packets=PACKETS, frame_size=128, vni=100)
    half = PACKETS // 2
    into_closed_port(cluster, seed=101)                      # the sink starts after the nodes are up
    logs, parts = [], []
    with TrafficSender(plan, split_host_port(cluster.ingress.partition("://")[2])) as sender:
        for k, (first, end) in enumerate(((0, half), (half, PACKETS))):
            sink = ReceiverProcess(host, port, capacity=PACKETS * 2, drain_ms=700)
            try:
                sink.start()
                logs.append(sender.send(rate=RATE, first=first, end=end))
                parts.append(sink.finish())
            finally:
                sink.close()
            if k == 0:
                into_closed_port(cluster, seed=102)          # the sink is down: restarted below
    send_ns = np.maximum(logs[0].send_ns, logs[1].send_ns)
    log = SendLog(send_ns, logs[0].start_ns, logs[1].end_ns, PACKETS, logs[0].send_errors + logs[1].send_errors)
    report = analyze(plan.pkt_flow, plan.pkt_flow_seq, log, merge(parts))
    egress = [node.status()["egress"]["counters"] for node in cluster.nodes]
    assert (report["sent"], report["send_errors"]) == (PACKETS, 0)
    summary = {k: report[k] for k in ("lost", "duplicated", "reordered", "remapped_flows", "lost_sample")}
    assert summary == {"lost": 0, "duplicated": 0, "reordered": 0, "remapped_flows": 0, "lost_sample": []}, egress
    assert sum(e["send_errors"] for e in egress) == 0, egress
    assert sum(e["icmp_refused"] for e in egress) >= 1, egress   # the case was exercised
