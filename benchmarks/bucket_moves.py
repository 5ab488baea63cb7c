"""Bucket moves under NAT traffic: how long moving 1,000 and 10,000 flows takes, how many packets
the old pairs held and forwarded, and what the traffic saw (loss, order, duplicates, NAT mappings,
latency per 100 ms while the flows moved).

    .venv/bin/python benchmarks/bucket_moves.py [--rate 3000] [--json out.json]

A loopback cluster like ``examples/cluster`` (controller + 3 replicated NAT nodes, 6 pairs; bucket
b starts at pair b % 6) on free ports. Two runs, each with its own traffic:

* 6,000 flows: once every flow has sent, pair 1's buckets move to pair 0 (one leg, about 1,000 flows);
* 12,000 flows: every other pair's buckets move to pair 0 (five legs, about 10,000 flows).

A move's time is the controller's (start to done: hold, flush, export, 2PC import, switch, per
leg). The per-1,000-flows figure divides it by the flows moved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

from deft.tools.drills import run_operation, start_traffic, traffic_report
from deft.tools.localnode import LocalCluster

WARMUP_S = {6000: 3.0, 12000: 5.0}   # every flow has sent by then at the default rate


def one_run(flows: int, sources: list[int], rate: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="deft-bucket-moves-"))
    cluster = LocalCluster(tmp, "bb", n_nodes=3, replicate=True, logs=False)
    try:
        cluster.wait_ready()
        warm = max(WARMUP_S.get(flows, 3.0), 1.2 * flows / rate)
        gen = start_traffic(cluster, tmp / "report.json", flows, rate, warm + 3.0)
        try:
            time.sleep(warm)
            buckets = [b for b in range(4096) if b % 6 in sources]
            t0 = time.monotonic()
            op = run_operation(cluster, {"cmd": "move", "buckets": buckets, "to_pair": 0}, timeout=60.0)
            move_s = (time.monotonic() - t0, warm)
        finally:
            report = traffic_report(gen, tmp / "report.json")
        forwarded = sum(i["counters"].get("move_forwarded", 0) for n in cluster.nodes for i in n.status()["instances"])
    finally:
        cluster.stop()
    ms = op["finished_ms"] - op["started_ms"] if op.get("finished_ms") is not None else None
    moved = op.get("move", {}).get("flows_moved", 0)
    start_ms, end_ms = move_s[1] * 1000, move_s[1] * 1000 + (ms or 0)
    during = [b for b in report["timeline"] if b.get("p50_us") and start_ms - 100 <= b["t_ms"] <= end_ms + 100]
    return {
        "flows": flows, "legs": len(sources), "state": op["state"], "error": op.get("error"), "ms": ms,
        "flows_moved": moved, "ms_per_1000_flows": round(ms / moved * 1000, 1) if ms and moved else None,
        "packets_forwarded_by_old_pairs": forwarded,
        "traffic": {k: report[k] for k in ("sent", "received", "lost", "duplicated", "reordered", "remapped_flows")},
        "latency_us": report["latency_us"],
        "during_move_p50_us_max": max((b["p50_us"] for b in during), default=None),
        "during_move_p99_us_max": max((b.get("p99_us") or 0 for b in during), default=None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bucket_moves.py")
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    runs = [one_run(6000, [1], args.rate), one_run(12000, [1, 2, 3, 4, 5], args.rate)]
    bad = False
    for r in runs:
        t, lat = r["traffic"], r["latency_us"]
        print(f"{r['flows']:>6} flows, {r['legs']} leg(s): {r['state']} in {r['ms']:.0f} ms, {r['flows_moved']} flows "
              f"moved ({r['ms_per_1000_flows']} ms per 1,000), {r['packets_forwarded_by_old_pairs']} packets "
              f"held/forwarded by the old pairs" + (f"  ({r['error']})" if r["error"] else ""))
        print(f"       traffic at {args.rate} pps: sent {t['sent']} lost {t['lost']} duplicated {t['duplicated']} "
              f"reordered {t['reordered']} remapped flows {t['remapped_flows']}; latency p50 {lat['p50'] / 1000:.2f} "
              f"ms p99 {lat['p99'] / 1000:.2f} ms; while moving, worst 100 ms p50 "
              f"{(r['during_move_p50_us_max'] or 0) / 1000:.2f} ms p99 {(r['during_move_p99_us_max'] or 0) / 1000:.2f} ms")
        bad |= bool(t["lost"] or t["duplicated"] or t["reordered"] or t["remapped_flows"] or r["state"] != "done")
    if args.json:
        args.json.write_bytes(orjson.dumps({"rate": args.rate, "runs": runs}, option=orjson.OPT_INDENT_2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
