"""Placement: which node and instance serves each bucket, as a route set for the switch.

Pure and deterministic: the same live nodes give the same routes. Every
instance of every live node is the primary of one pair; its secondary is the
same-numbered instance on the next node (in id order), never on its own node,
or none when only one node is up. Buckets go round-robin over the pairs.

Without replication wired into the workers (issue 3, next), moving a bucket
moves its flows without their state; the route set already names the
secondaries the workers will replicate to.
"""

from __future__ import annotations

from typing import Any

NONE = -1


def place(nodes: list[tuple], n_buckets: int, epoch: int) -> dict[str, Any]:
    """A ``set_routes`` request for ``nodes`` = [(id, fabric, instances[, replication endpoint])]."""
    nodes = sorted(tuple(n) + ("",) * (4 - len(n)) for n in nodes)
    if not nodes or any(n[2] < 1 for n in nodes):
        raise ValueError("placement needs at least one node with at least one instance")
    pairs = []
    for k, (_, _, n_inst, _) in enumerate(nodes):
        nxt = (k + 1) % len(nodes)
        for i in range(n_inst):
            if nxt == k or i >= nodes[nxt][2]:
                pairs.append([k, i, NONE, NONE])
            else:
                pairs.append([k, i, nxt, i])
    return {
        "cmd": "set_routes",
        "epoch": epoch,
        "nodes": [[node_id, fabric, replication] for node_id, fabric, _, replication in nodes],
        "pairs": pairs,
        "buckets": [b % len(pairs) for b in range(n_buckets)],
    }
