"""Planned moves under NAT traffic: how long a join + rebalance, a drain and a rebalance back take,
and what the traffic saw (loss, order, duplicates, NAT mappings, latency per 100 ms).

    .venv/bin/python benchmarks/moves.py [--rate 3000] [--flows 1000] [--json out.json]

A loopback cluster like ``examples/cluster`` (controller + 3 replicated NAT nodes, 2 instances
each, node1 the ingress) on free ports. One second into the traffic a 4th node joins and
``rebalance`` runs; then ``drain`` of node 2, ``undrain`` and ``rebalance`` again. Each operation's
duration is the controller's (start to done); "timeline p50" is the generator's per-100-ms median
latency, highest during the run against the run's own median.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

from deft.tools.ctl import query
from deft.tools.drills import run_operation, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moves.py")
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="deft-moves-"))
    cluster = LocalCluster(tmp, "bm", n_nodes=3, replicate=True, logs=False)
    ops = []
    try:
        cluster.wait_ready()
        gen = start_traffic(cluster, tmp / "report.json", args.flows, args.rate, 7.0)
        t_gen = time.monotonic()   # about when the generator's clock starts (its timeline is relative to it)
        try:
            time.sleep(1.0)
            t = time.monotonic()
            node4 = cluster.add_node()
            wait_for(cluster, lambda st: any(i["id"].startswith(node4.node_id) and i["state"] == "up"
                                             for i in st["instances"]), timeout=15)
            joined_s = time.monotonic() - t
            scale_out = [time.monotonic() - t_gen]
            ops.append(("rebalance after a join", run_operation(cluster, {"cmd": "rebalance"})))
            scale_out.append(time.monotonic() - t_gen)
            drained = cluster.nodes[1].node_id
            ops.append((f"drain {drained}", run_operation(cluster, {"cmd": "drain", "node": drained})))
            query(cluster.ctl.control, {"cmd": "undrain", "node": drained}, 3000)
            ops.append(("rebalance back", run_operation(cluster, {"cmd": "rebalance"})))
        finally:
            report = traffic_report(gen, tmp / "report.json")
    finally:
        cluster.stop()
    timeline = [b["p50_us"] for b in report["timeline"] if b.get("p50_us")]
    out = {
        "rate": args.rate, "flows": args.flows, "node_join_s": round(joined_s, 2),
        "operations": [{"what": what, "state": op["state"], "ms": round(op["finished_ms"] - op["started_ms"], 1)
                        if op.get("finished_ms") is not None else None, "steps": op["steps"],
                        "hand_overs": op["hand_overs"], "error": op.get("error")} for what, op in ops],
        "traffic": {k: report[k] for k in ("sent", "received", "lost", "duplicated", "reordered", "remapped_flows")},
        "latency_us": report["latency_us"],
        "timeline_p50_us_max": max(timeline, default=None),
        # packets per 100 ms from half a second before the rebalance to a second after (scale-out 3 -> 4)
        "scale_out_timeline": [{"t_ms": b["t_ms"], "sent": b["sent"], "received": b["received"],
                                "p50_us": b["p50_us"], "p99_us": b.get("p99_us")} for b in report["timeline"]
                               if scale_out[0] * 1000 - 500 <= b["t_ms"] <= scale_out[1] * 1000 + 1000],
        "scale_out_window_ms": [round(x * 1000) for x in scale_out],
    }
    for o in out["operations"]:
        print(f"{o['what']:28s} {o['state']:6s} {o['ms']} ms  {o['steps']} steps  {o['hand_overs']} hand-overs"
              + (f"  ({o['error']})" if o["error"] else ""))
    t, lat = out["traffic"], out["latency_us"]
    print(f"node join to up: {out['node_join_s']} s")
    print(f"traffic at {args.rate} pps: sent {t['sent']} received {t['received']} lost {t['lost']} "
          f"duplicated {t['duplicated']} reordered {t['reordered']} remapped flows {t['remapped_flows']}")
    print(f"latency p50 {lat['p50'] / 1000:.2f} ms p99 {lat['p99'] / 1000:.2f} ms; highest 100 ms p50 "
          f"{(out['timeline_p50_us_max'] or 0) / 1000:.2f} ms")
    w = out["scale_out_window_ms"]
    print(f"scale-out 3 -> 4 nodes (rebalance from about {w[0]} to {w[1]} ms of the traffic), per 100 ms:")
    for b in out["scale_out_timeline"]:
        print(f"  {b['t_ms']:>6} ms  sent {b['sent']:>4}  received {b['received']:>4}  p50 "
              f"{(b['p50_us'] or 0) / 1000:6.2f} ms  p99 {(b['p99_us'] or 0) / 1000:6.2f} ms")
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    bad = t["lost"] or t["duplicated"] or t["reordered"] or t["remapped_flows"] or any(
        o["state"] != "done" for o in out["operations"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
