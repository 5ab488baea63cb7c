"""Copies for a secondary on another node reach its worker on a socket it drains but never wakes for.

Two replicated nodes: node 1 takes the traffic, and the pairs whose primary is on node 1 have their
secondary on node 2, so every copy of their packets crosses to node 2's workers (``[node] copies``
port + index). The Prepares of those batches wake node 2's workers; the copies must not: before
the copies had a socket of their own, each went to the 2PC ROUTER and woke its secondary once more.
"""

from __future__ import annotations

import pytest

from deft.tools.drills import healthy, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

pytestmark = pytest.mark.slow

RATE, SECONDS = 200, 3.0


def counters(node) -> list[dict]:
    return [i["counters"] for i in node.status()["instances"]]


def total(node, *names: str) -> int:
    return sum(c.get(name, 0) for c in counters(node) for name in names)


# what may wake node 2's workers for a packet of node 1's pairs: their Prepares (and the odd Commit);
# not their packets or votes (those are node 2's own pairs'), and timers are counted in the slack
NOT_OWN = ("woke_replica", "woke_global", "woke_timer")


def test_copies_to_another_node_wake_no_worker_and_lose_nothing(tmp_path):
    cluster = LocalCluster(tmp_path, "cp", n_nodes=2, replicate=True)
    try:
        cluster.wait_ready()
        wait_for(cluster, healthy)
        one, two = cluster.nodes
        before = {"batches": total(one, "batches"), "woke": total(two, *NOT_OWN),
                  "copies": total(two, "copies_messages")}
        report = traffic_report(start_traffic(cluster, tmp_path / "r.json", 100, RATE, SECONDS), tmp_path / "r.json")
        assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0), report
        batches = total(one, "batches") - before["batches"]     # each one Prepare to node 2
        woke = total(two, *NOT_OWN) - before["woke"]
        copies = total(two, "copies_messages") - before["copies"]
        assert batches > RATE * SECONDS / 4        # node 1's primaries carried their share
        assert copies >= batches                   # a copy message per io round at this rate, at least
        # Prepares and the odd Commit wake it; copies (about one per packet here) would double this
        assert woke <= batches * 1.25 + 20, (woke, batches, copies)
        assert total(two, "copies_bad_frames") == 0 and total(two, "repl_unknown_duplicates") == 0
    finally:
        left = cluster.stop()
        assert not any(left.values()), left
