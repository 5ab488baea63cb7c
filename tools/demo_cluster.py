"""``make demo``: two controllers and three NAT nodes on loopback, traffic, a primary, a node and the active controller killed mid-run.

    python -m deft.tools.demo_cluster [--rate 3000] [--seconds 8] [--flows 1000]

node1 takes the traffic (VXLAN over UDP); node2 and node3 get the buckets the
controller placed on them through their fabric. Every pair's state is
replicated by 2PC to a secondary on another node. A third of the way in, the
worker serving pair 2 is SIGKILLed; two thirds in, a whole node. The report
shows what the traffic saw (lost, duplicated, reordered, NAT mappings
changed), how long each failover took, and the cluster as the controller
sees it afterwards. A fourth node joins before the traffic and takes pairs when,
after the node kill, a rebalance spreads the primaries over the live nodes again
(planned hand-overs under traffic); then buckets 100-199 move to pair 3 with their
flows' state (a bucket move) and the fourth node is drained again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from deft.tools.ctl import render_cluster
from deft.tools.drills import Failover, healthy, kill_node, kill_primary_worker, run_operation, wait_for
from deft.tools.localnode import LocalCluster


def describe(what: str, f: Failover) -> str:
    return (f"{what} {f.victim} (pairs {list(f.pairs)}): failure detected {f.detected_ms:.0f} ms after the kill, "
            f"first packet of the taken-over pairs out {f.released_ms:.0f} ms after it "
            f"({f.recovery_ms:.0f} ms after detection)")


def take_over(cluster: LocalCluster) -> str:
    """Kill the active controller; the standby takes over (how long it took, from its status)."""
    active = cluster.active_controller()
    killed_at = time.time()
    active.proc.kill()
    new = cluster.active_controller()
    st = new.wait_for(healthy, 10.0)
    c = st["controller"]
    return (f"the active controller {active.control}: {c['id']} took over {(c['active_since'] - killed_at) * 1000:.0f} ms "
            f"later (lease term {c['term']}), with the assignment read back from the nodes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-demo-cluster")
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--flows", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deft-demo-") as tmp:
        tmp_path = Path(tmp)
        cluster = LocalCluster(tmp_path, "demo", 3, replicate=True, miss_limit=5, standby=True)
        gen = None
        try:
            cluster.wait_ready()
            nodes = cluster.nodes[:]
            print(f"== controller {cluster.ctl.control} active, {cluster.controllers[1].control} standing by; nodes "
                  f"{', '.join(n.node_id for n in nodes)} up; 6 pairs, each with a secondary on another node")
            spare = cluster.add_node()   # joins after the placement: it serves nothing until a rebalance
            print(f"== node {spare.node_id} joins the running cluster (no pairs yet)")
            print(f"== traffic into {nodes[0].ingress}: {args.flows} flows (half TCP) at {args.rate} pps "
                  f"for {args.seconds:.0f} s")
            report_path = tmp_path / "report.json"
            gen = subprocess.Popen([sys.executable, "-m", "deft.tools.trafficgen", "--to", nodes[0].ingress,
                                    "--listen", cluster.egress, "--flows", str(args.flows), "--rate", str(args.rate),
                                    "--duration", str(args.seconds), "--json", str(report_path), "--quiet"])
            time.sleep(args.seconds / 3)
            worker = kill_primary_worker(cluster, 2)
            print("== SIGKILL " + describe("worker", worker))
            time.sleep(max(0.0, args.seconds / 3 - worker.released_ms / 1000))
            node = kill_node(cluster)
            if node is not None:
                print("== SIGKILL " + describe("node", node))
            wait_for(cluster, healthy)
            print("== SIGKILL " + take_over(cluster))
            op = run_operation(cluster, {"cmd": "rebalance"}, timeout=30.0)   # the survivors took the dead node's primaries: spread them again
            print(f"== rebalance over the live nodes: {op['state']} in {op['finished_ms'] - op['started_ms']:.0f} ms, "
                  f"{op['hand_overs']} planned hand-overs (frozen primary, nothing in doubt)"
                  + (f": {op['error']}" if op.get("error") else ""))
            st = cluster.ctl.status()
            print(f"   {spare.node_id} now serves pairs {sorted(p['pair'] for p in st['pairs'] if p['primary'].startswith(spare.node_id + '/'))} as primary")
            op = run_operation(cluster, {"cmd": "move", "buckets": list(range(100, 200)), "to_pair": 3}, timeout=30.0)
            m = op.get("move") or {}
            print(f"== move --buckets 100-199 --to-pair 3: {op['state']} in {op['finished_ms'] - op['started_ms']:.0f} ms, "
                  f"{m.get('flows_moved', 0)} flows with their state, from {m.get('legs_done', 0)} pairs"
                  + (f": {op['error']}" if op.get("error") else ""))
            op = run_operation(cluster, {"cmd": "drain", "node": spare.node_id}, timeout=30.0)
            print(f"== drain {spare.node_id}: {op['state']} in {op['finished_ms'] - op['started_ms']:.0f} ms, "
                  f"{op['hand_overs']} planned hand-overs; it serves nothing now"
                  + (f": {op['error']}" if op.get("error") else ""))
            gen.wait(args.seconds + 60)
            wait_for(cluster, healthy)
            print("\n== deft-ctl --controller status")
            print(render_cluster(cluster.ctl.status()))
            if gen.returncode != 0:
                return 1
            r = orjson.loads(report_path.read_bytes())
            ok = (r["lost"], r["duplicated"], r["reordered"], r["remapped_flows"]) == (0, 0, 0, 0)
            print(f"\n== traffic: sent {r['sent']:,}, lost {r['lost']}, duplicated {r['duplicated']}, reordered "
                  f"{r['reordered']}, flows whose NAT mapping changed {r['remapped_flows']}"
                  f"{'  -> no harm done' if ok else ''}")
            lat = r.get("latency_us") or {}
            if lat:
                print(f"   latency p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us, max {lat['max']:.0f} us")
            return 0
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
                gen.wait()
            cluster.stop()
            print("== stopped; every process by its PID, shared memory removed")


if __name__ == "__main__":
    sys.exit(main())
