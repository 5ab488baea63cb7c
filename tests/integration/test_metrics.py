"""Prometheus endpoints: the controller's (load per pair, nodes, instances, operations) and each
supervisor's (every worker and io counter, packets per pair, input rings), scraped under traffic."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deft.tools.drills import start_traffic, traffic_report
from deft.tools.localnode import LocalCluster

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_the_controller_and_every_node_serve_metrics_under_traffic(tmp_path):
    cluster = LocalCluster(tmp_path, "mx", n_nodes=3, replicate=True, metrics=True)
    try:
        cluster.wait_ready()
        gen = start_traffic(cluster, tmp_path / "report.json", 300, 1000, 3.0)
        try:
            time.sleep(2.0)
            ctl = scrape(cluster.metrics_urls[0])
            nodes = [scrape(url) for url in cluster.metrics_urls[1:]]
        finally:
            report = traffic_report(gen, tmp_path / "report.json")
        after = [scrape(url) for url in cluster.metrics_urls[1:]]   # every packet processed by now
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
    assert report["lost"] == 0
    pps = {s.labels["pair"]: s.value for s in ctl["deft_pair_pps"]}
    assert len(pps) == 6 and sum(pps.values()) > 500, pps           # about 1000 pps over 6 pairs
    assert sum(s.value for s in ctl["deft_pair_buckets"]) == 4096
    assert all(s.value == 1 for s in ctl["deft_node_up"]) and len(ctl["deft_node_up"]) == 3
    assert {s.labels["instance"] for s in ctl["deft_instance_busy"]} >= {f"{n.node_id}/nf0" for n in cluster.nodes}
    assert ctl["deft_controller_heartbeats"][0].value > 0
    assert ctl["deft_operations_running"][0].value == 0
    processed = [sum(s.value for s in n["deft_pair_processed"]) for n in nodes]
    assert sum(processed) > 0
    # the counter counts what the primaries processed: every packet, once the traffic is over (a scrape
    # under traffic lags by the queues, half a second and more on a loaded machine)
    total = sum(s.value for n in after for s in n["deft_pair_processed"])
    assert total >= report["received"], (total, report["received"])
    assert sum(s.value for s in nodes[0]["deft_io_received"]) > 0      # node 1 takes the traffic
    assert len(nodes[1]["deft_worker_processed"]) == 2 and "deft_worker_input_ring" in nodes[2]
