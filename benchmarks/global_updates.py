"""Global state updates per batch: what committing them through Raft before release costs.

    .venv/bin/python benchmarks/global_updates.py [--rate 10000] [--seconds 5] [--loads 0,1,5,10] [--search]

The paper's experiment (global state, P1): the same traffic through an NF that
queues 0, 1, 5 or 10 global updates (``incr``) per batch. Each load runs on
its own cluster: a controller and three nodes on loopback, every node a
member of the global-state Raft (fsync on), ``flowcounter`` on 2 instances
per node with ``global_updates_per_batch = K`` and ``batch_size = 50``,
replication off (so only the global path differs). node1 takes the traffic
and its switch spreads the six pairs over the three nodes, so most entries
are proposed on followers and forwarded to the leader.

With K > 0 every output batch is held until its entry (all of its NF calls'
updates, one Raft entry) is committed and applied on the worker's node; the
worker keeps the batch's pair paused meanwhile (group commit: what arrives
waits for the next batch). Printed per load: packets offered and delivered
per second at ``--rate`` (deft-trafficgen, 500 flows), loss, latency p50/p99,
and from the workers' counters the entries committed and the mean ops per
entry; ``--search`` adds the highest zero-loss rate (slow).

NF calls per output batch vary with load (an output buffer collects several
calls), so ops per entry is K x calls per batch: measured, not set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_rates import RateSearch, trial  # noqa: E402

from deft.tools.localnode import LocalCluster  # noqa: E402


def worker_totals(cluster: LocalCluster) -> dict[str, int]:
    total: dict[str, int] = {}
    for node in cluster.nodes:
        for inst in node.status()["instances"]:
            for name, value in inst["counters"].items():
                if isinstance(value, int):
                    total[name] = total.get(name, 0) + value
    return total


def wait_leader(cluster: LocalCluster, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((node.status()["raft"] or {}).get("role") == "leader" for node in cluster.nodes):
            return
        time.sleep(0.1)
    raise RuntimeError("no Raft leader")


def run_load(tmp: Path, k: int, rate: int, seconds: float, search: bool) -> dict:
    cluster = LocalCluster(tmp, f"gu{k}", 3, kind="flowcounter", params={"global_updates_per_batch": k},
                           raft=True, nf={"batch_size": 50}, logs=False)
    try:
        cluster.wait_ready()
        wait_leader(cluster)
        trial(cluster.ingress, cluster.egress, 2_000, 1.0)       # warm-up: flows and Raft sessions exist
        before = worker_totals(cluster)
        report = trial(cluster.ingress, cluster.egress, rate, seconds)
        after = worker_totals(cluster)
        out = {"k": k, "report": report,
               "entries": after.get("global_batches", 0) - before.get("global_batches", 0),
               "batches": after["batches"] - before["batches"],
               "retries": after.get("global_retries", 0) - before.get("global_retries", 0),
               "ops": after.get("global_ops", 0) - before.get("global_ops", 0),
               "processed": after["processed"] - before["processed"]}
        if search:
            s = RateSearch(start=2_000)
            while not s.done:
                r = s.next_rate()
                s.record(r, trial(cluster.ingress, cluster.egress, r, 2.0))
            out["zero_loss"] = s.good
        return out
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--loads", default="0,1,5,10")
    ap.add_argument("--search", action="store_true", help="also search the highest zero-loss rate")
    args = ap.parse_args()
    loads = [int(x) for x in args.loads.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in loads:
            results.append(run_load(Path(tmp), k, args.rate, args.seconds, args.search))
            r = results[-1]["report"]
            print(f"  load {k}: delivered {r['received']:,} of {r['sent']:,}", file=sys.stderr)
    base = None
    print(f"\nflowcounter, 3 nodes with Raft, batch_size 50, offered {args.rate:,} pps for {args.seconds:g} s\n")
    head = (f"{'updates/call':>12} {'offered pps':>11} {'delivered pps':>13} {'vs none':>7} {'lost':>7} "
            f"{'p50 us':>8} {'p99 us':>8} {'entries':>8} {'ops/entry':>9} {'retries':>7}")
    if args.search:
        head += f" {'zero-loss pps':>13}"
    print(head)
    for res in results:
        r = res["report"]
        delivered = r["received"] / args.seconds
        base = delivered if base is None and res["k"] == 0 else base
        lat = r.get("latency_us") or {}
        ops = res["ops"] / res["entries"] if res["entries"] else 0.0
        line = (f"{res['k']:>12} {r.get('send_rate_pps') or 0:>11,.0f} {delivered:>13,.0f} "
                f"{(delivered / base if base else float('nan')):>7.2f} {r['lost']:>7,} "
                f"{lat.get('p50', float('nan')):>8.0f} {lat.get('p99', float('nan')):>8.0f} "
                f"{res['entries']:>8,} {ops:>9.1f} {res['retries']:>7}")
        if args.search:
            line += f" {res.get('zero_loss', 0):>13,}"
        print(line)


if __name__ == "__main__":
    main()
