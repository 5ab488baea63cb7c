"""Recovery time of failovers under traffic on a 3-node loopback cluster (NAT, replication on).

    .venv/bin/python benchmarks/failover_recovery.py [--kills 20] [--node-kills 3] [--rate 3000]

One cluster (controller, heartbeats every 10 ms, a node failed after 5 missed
beats), one traffic generator running through every kill. Then, one at a
time, each waiting until every pair has a live primary and secondary again:

* ``--node-kills`` SIGKILLs of a whole node that serves primaries (its
  supervisor and all its processes; the controller notices the missing
  heartbeats), the node restarted from the same config afterwards;
* ``--kills`` SIGKILLs of the primary worker of pair k % 6 (the supervisor
  reaps it and tells the controller at once, with its commit record).

Per failover, on one clock (CLOCK_MONOTONIC is system-wide):
  detected  the controller's failure event (a worker's FAILED notice; a node's
            last missed beat)
  released  the first packet of a taken-over pair leaving its new primary
            (the worker's ``takeover_release_ns``; for a node, the last of its pairs)
and printed: detected->released (the issue's "heartbeat miss to first released
packet of an affected flow", target < 100 ms, stretch 30 ms) and kill->released,
p50 and max; then what the traffic saw over all of it (lost, duplicated,
reordered, flows whose NAT mapping changed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from deft.tools.drills import Failover, kill_node, kill_primary_worker, restart_node
from deft.tools.localnode import LocalCluster

N_PAIRS = 6


def summary(name: str, values: list[Failover]) -> str:
    if not values:
        return f"{name}: none"
    det = [v.recovery_ms for v in values]
    kill = [v.released_ms for v in values]
    return (f"{name} ({len(values)}): detected->released p50 {statistics.median(det):6.1f} ms  max {max(det):6.1f} ms"
            f"   kill->released p50 {statistics.median(kill):6.1f} ms  max {max(kill):6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--node-kills", type=int, default=3)
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--keep", metavar="DIR", help="write configs and logs here instead of a temporary directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(args.keep or tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(tmp, "rt", 3, replicate=True, miss_limit=5)
        gen = None
        try:
            cluster.wait_ready()
            report = tmp / "report.json"
            duration = 4 + 1.0 * args.kills + 4.0 * args.node_kills
            gen = subprocess.Popen([sys.executable, "-m", "deft.tools.trafficgen", "--to", cluster.ingress,
                                    "--listen", cluster.egress, "--json", str(report), "--quiet",
                                    "--flows", str(args.flows), "--rate", str(args.rate),
                                    "--duration", str(duration)])
            t_gen = time.monotonic()
            time.sleep(1.5)
            workers, nodes = [], []
            kill_times: list[float] = []
            # node kills first: without rebalancing (a scaling feature) primaries gather on the survivors
            for k in range(args.node_kills):
                kill_times.append((time.monotonic() - t_gen) * 1000)
                outcome = kill_node(cluster)
                if outcome is None:
                    print("no node other than the ingress node serves a primary any more: node kills end here")
                    break
                nodes.append(outcome)
                print(f"node kill {k + 1} ({outcome.victim}, pairs {list(outcome.pairs)}): detected->released "
                      f"{outcome.recovery_ms:6.1f} ms  kill->released {outcome.released_ms:6.1f} ms", flush=True)
                restart_node(cluster, outcome.victim, tmp)
            for k in range(args.kills):
                kill_times.append((time.monotonic() - t_gen) * 1000)
                workers.append(kill_primary_worker(cluster, k % N_PAIRS))
                w = workers[-1]
                print(f"worker kill {k + 1:2d} ({w.victim}): detected->released {w.recovery_ms:6.1f} ms  "
                      f"kill->released {w.released_ms:6.1f} ms", flush=True)
                time.sleep(0.3)
            gen.wait(duration + 60)
            r = orjson.loads(report.read_bytes())
            print()
            print(summary("worker kills", workers))
            print(summary("node kills  ", nodes))
            print(f"traffic over all kills: sent {r['sent']:,}  lost {r['lost']}  duplicated {r['duplicated']}  "
                  f"reordered {r['reordered']}  flows with a changed NAT mapping {r['remapped_flows']}")
            if r["lost"]:
                print("lost, first ones (ms after the first send):",
                      [(x["sent_ms"], x["flow"], x["flow_seq"]) for x in r["lost_sample"][:10]])
            print("kills at (ms after the generator started):", [round(t) for t in kill_times])
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
                gen.wait()
            cluster.stop()


if __name__ == "__main__":
    main()
