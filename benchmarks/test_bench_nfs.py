"""NF batch processing speed: established flows, one core, batches of 64 (and 256).

Run:  .venv/bin/python -m pytest benchmarks/test_bench_nfs.py --benchmark-only

Each round processes a fresh copy of a prepared batch (copied in setup, not
timed) whose flows are already in the table: the steady state of a long-lived
flow, which is what most packets are. ``extra_info["pps"]`` is packets per
second per core, from the mean time of one ``process`` call.
"""

from __future__ import annotations

import numpy as np
import pytest

from deft.nfs.base import Context, Params, ipv4_to_int
from deft.nfs.firewall import Firewall
from deft.nfs.flowcounter import FlowCounter
from deft.nfs.loadbalancer import LoadBalancer
from deft.nfs.nat import Nat
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_TCP, TCP_ACK, TCP_PSH, TCP_SYN
from deft.runtime.dataplane.parse import records_from_datagrams

VIP = ipv4_to_int("198.51.100.10")
ROUNDS = 3000


def tcp_batch(n, flags=TCP_ACK | TCP_PSH, reverse=False, payload=b"x" * 64):
    """n packets of n distinct client flows to VIP:443 (or the replies, with reverse=True)."""
    frames = []
    for i in range(n):
        c, cp = ipv4_to_int("10.0.0.1") + i, 40000 + i
        s, sp, d, dp = (VIP, 443, c, cp) if reverse else (c, cp, VIP, 443)
        frames.append(vxlan_wrap(build_frame(s, d, IPPROTO_TCP, sp, dp, payload, tcp_flags=flags), 1))
    recs, drops = records_from_datagrams(frames, ts_ns=10**9)
    assert not drops.any()
    recs["flow_id"] = np.arange(1, n + 1)
    return recs


def make(kind):
    ctx = Context()
    if kind == "flowcounter":
        return FlowCounter(Params({}), ctx)
    if kind == "nat":
        return Nat(Params({"public_ip": "203.0.113.1"}), ctx)
    if kind == "loadbalancer":
        return LoadBalancer(Params({"backends": [f"10.1.0.{i}:8080" for i in range(1, 9)]}), ctx)
    return Firewall(Params({"rules": [{"action": "allow", "proto": "tcp", "dst_port": [80, 443]}],
                            "default_action": "deny"}), ctx)


def established(kind, n):
    """(nf, table, rows, batch) with the batch's flows already set up in the table."""
    nf = make(kind)
    table = nf.new_table(1024)
    if kind == "firewall":
        for flags, rev in ((TCP_SYN, False), (TCP_SYN | TCP_ACK, True), (TCP_ACK, False)):
            b = tcp_batch(n, flags, rev)
            rows, new = table.rows_for(b["flow_id"])
            assert not nf.process(b, rows, new, table, nf.ctx).any()
    batch = tcp_batch(n)
    rows, new = table.rows_for(batch["flow_id"])
    nf.process(batch.copy(), rows, new, table, nf.ctx)           # first packets: mappings, backends
    nf.ctx.now_ns = int(batch["ts_ns"].max())
    return nf, table, rows, batch


@pytest.mark.parametrize("n", [64, 256])
@pytest.mark.parametrize("kind", ["flowcounter", "nat", "loadbalancer", "firewall"])
def test_bench_established(benchmark, kind, n):
    nf, table, rows, batch = established(kind, n)
    empty = np.zeros(0, np.int64)

    def setup():
        return (batch.copy(), rows, empty, table, nf.ctx), {}

    verdict = benchmark.pedantic(nf.process, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=50)
    assert not verdict.any()                                      # all forwarded
    pps = n / benchmark.stats.stats.mean
    benchmark.extra_info["batch"] = n
    benchmark.extra_info["pps"] = round(pps)
    benchmark.extra_info["pps_median"] = round(n / benchmark.stats.stats.median)


@pytest.mark.parametrize("kind", ["nat", "loadbalancer", "firewall"])
def test_bench_first_packets(benchmark, kind):
    """64 flows seen for the first time (NAT: port choice; LB: Maglev lookup; firewall: SYN + rules)."""
    n = 64
    nf = make(kind)
    table = nf.new_table(4096)
    batch = tcp_batch(n, TCP_SYN) if kind == "firewall" else tcp_batch(n)
    nf.ctx.now_ns = int(batch["ts_ns"].max())

    def setup():
        live = table.live_rows()
        if len(live):
            table.remove(live)                                    # forget the last round's flows
        nf.rebuild(table)
        rows, new_rows = table.rows_for(batch["flow_id"])
        return (batch.copy(), rows, new_rows, table, nf.ctx), {}

    verdict = benchmark.pedantic(nf.process, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=50)
    assert not verdict.any()
    benchmark.extra_info["batch"] = n
    benchmark.extra_info["new_flows_per_s"] = round(n / benchmark.stats.stats.mean)
