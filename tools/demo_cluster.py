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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from deft.tools.ctl import render_cluster
from deft.tools.localnode import (
    LocalController,
    LocalNode,
    controller_config,
    free_port,
    node_config,
    to_toml,
    write_config,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-demo-cluster")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--flows", type=int, default=300)
    args = parser.parse_args(argv)
    tag = f"dc{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="deft-demo-cluster-") as tmp:
        tmp_path = Path(tmp)
        cfg = controller_config(heartbeat_ms=10, miss_limit=5)
        (tmp_path / "controller.toml").write_text(to_toml(cfg))
        ctl = LocalController.start(tmp_path / "controller.toml", tmp_path / "controller.log")
        egress = f"udp://127.0.0.1:{free_port()}"
        nodes = []
        try:
            for n in (1, 2, 3):
                conf = node_config(f"{tag}n{n}", "nat", 2, {"public_ip": f"203.0.113.{n}"},
                                   egress={"send_to": egress},
                                   node={"controller": cfg["controller"]["heartbeats"],
                                         "fabric": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
                                   **({} if n == 1 else {"ingress": {"listen": "none"}}))
                path = write_config(tmp_path / f"n{n}.toml", conf)
                nodes.append(LocalNode.start(path, tmp_path / f"n{n}.log"))
            for node in nodes:
                node.wait_ready()
            ctl.wait_for(lambda st: any(e["event"] == "routes_pushed" and e["ok"] and len(e["nodes"]) == 3
                                        for e in st["events"]))
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
            left = {node.node_id: node.stop() for node in nodes}
            ctl.stop()
        print(f"== stopped; shared memory the killed node left (removed now): {left[victim.node_id] and 'yes'}")
        return 0 if gen.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
