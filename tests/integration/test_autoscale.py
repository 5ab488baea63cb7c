"""The autoscaler end to end: NAT traffic skewed onto a few flows makes their pairs hot, and within
seconds the controller moves hot buckets to a cool pair, losing nothing; even load moves nothing."""

from __future__ import annotations

import time

import pytest

from deft.tools.ctl import query
from deft.tools.drills import start_traffic, traffic_report
from deft.tools.localnode import LocalCluster

from .test_failover import assert_no_harm

pytestmark = pytest.mark.slow

# the hot pairs' primaries measured 0.5-0.6 busy, the cool ones 0.2: the threshold sits between them (at
# 0.5 a faster or quieter machine kept the hot pairs under it, and nothing moved within the test's 4 s)
HIGH = 0.4
AUTOSCALE = {"autoscale": True, "autoscale_high": HIGH, "autoscale_dwell_ms": 1000,
             "autoscale_cooldown_ms": 4000, "autoscale_min_gain": 0.15}


def autoscaled(tmp_path, tag: str, seconds: float, *traffic: str, controller: dict) -> tuple[dict, dict]:
    cluster = LocalCluster(tmp_path, tag, n_nodes=3, replicate=True, controller=controller)
    try:
        cluster.wait_ready()
        gen = start_traffic(cluster, tmp_path / "report.json", 1000, *traffic)
        try:
            time.sleep(seconds)
            st = query(cluster.ctl.control, {"cmd": "status"}, 3000)
        finally:
            report = traffic_report(gen, tmp_path / "report.json")
        assert_no_harm(report, cluster)
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
    return st, report


def test_skewed_load_moves_hot_buckets_to_a_cool_pair_within_seconds(tmp_path):
    # 3 of 1000 flows carry 60 % of 2000 pps: their pairs are hot, the others cool
    st, _ = autoscaled(tmp_path, "as", 4.0, "2000", "5.0", "--hot-flows", "3", "--hot-share", "0.6",
                       controller=AUTOSCALE)
    moves = [op for op in st["operations"] if op.get("origin") == "autoscale"]
    assert moves and moves[0]["state"] in ("done", "running"), st["operations"]
    assert st["autoscale"]["moves"] >= 1 and st["autoscale"]["last_move"] is not None
    assert moves[0]["move"]["buckets"] >= 1
    last = st["autoscale"]["last_move"]      # from a hot pair to a cooler one, by at least the gain asked
    assert last["busy_from"] > HIGH and last["busy_from"] - last["busy_to"] >= 0.15, last


@pytest.mark.long   # the autoscaler core is held to noisy even traces in tests/unit/test_autoscale.py
def test_even_load_moves_nothing(tmp_path):
    st, _ = autoscaled(tmp_path, "ae", 6.0, "1000", "7.0", controller={"autoscale": True})
    assert st["autoscale"]["moves"] == 0 and not st["operations"], (st["autoscale"], st["operations"])
