"""``make demo-cluster``: a controller and three nodes on loopback, traffic, a node killed mid-run.

    python -m deft.tools.demo_cluster [--rate 5000] [--seconds 8]

node1 takes the traffic (VXLAN); node2 and node3 have no ingress and get the
buckets the controller placed on them through their fabric. Half-way through,
node3 is SIGKILLed (a node failure): the controller declares it failed after
missed heartbeats and pushes routes without it. The report shows what the
traffic saw. Until replication is wired into the workers (issue 3), the
packets node3 held when it died are lost and its flows continue elsewhere
without their state; this demo shows exactly that, with numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from deft.tools.ctl import render_cluster
from deft.tools.localnode import LocalCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-demo-cluster")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--flows", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deft-demo-cluster-") as tmp:
        tmp_path = Path(tmp)
        cluster = LocalCluster(tmp_path, "dc", 3, miss_limit=5)
        ctl, nodes, egress = cluster.ctl, cluster.nodes, cluster.egress
        try:
            cluster.wait_ready()
            print(f"== controller {ctl.control}; nodes {[n.node_id for n in nodes]} up; routes over all three")
            victim = nodes[2]
            timer = threading.Timer(args.seconds / 2, lambda: os.kill(victim.pid, 9))
            print(f"== traffic into {nodes[0].node_id}: {args.flows} flows at {args.rate} pps for "
                  f"{args.seconds:.0f} s; SIGKILL {victim.node_id} (supervisor pid {victim.pid}) at "
                  f"{args.seconds / 2:.0f} s")
            report_path = tmp_path / "report.json"
            timer.start()
            gen = subprocess.run([sys.executable, "-m", "deft.tools.trafficgen", "--to", nodes[0].ingress,
                                  "--listen", egress, "--flows", str(args.flows), "--rate", str(args.rate),
                                  "--duration", str(args.seconds), "--json", str(report_path)])
            timer.join()
            time.sleep(0.3)
            print("\n== deft-ctl --controller status")
            print(render_cluster(ctl.status()))
            if gen.returncode == 0:
                r = orjson.loads(report_path.read_bytes())
                print(f"\n== lost {r['lost']} of {r['sent']} (the failed node's in-flight packets: no replication yet), "
                      f"reordered {r['reordered']}, duplicated {r['duplicated']}")
        finally:
            left = cluster.stop()
        print(f"== stopped; shared memory the killed node left (removed now): {left[victim.node_id] and 'yes'}")
        return 0 if gen.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
