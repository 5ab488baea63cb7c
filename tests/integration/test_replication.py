"""Replication in normal operation: every batch reaches the other node's secondary by 2PC before release."""

from __future__ import annotations

import time

import pytest

from deft.tools.localnode import LocalCluster

from .conftest import run_trafficgen

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated_cluster(tmp_path):
    cluster = LocalCluster(tmp_path, "rp", replicate=True)
    try:
        yield cluster.wait_ready().ctl, cluster.nodes
    finally:
        cluster.stop()


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
