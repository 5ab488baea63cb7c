"""Replication overhead, side by side: two 2-node NAT clusters, secondaries off and on.

    .venv/bin/python benchmarks/replication_overhead.py [--trial-seconds 2]

Each cluster is a controller, an ingress node and a fabric-only node; the
controller places every instance's pair across the two nodes. With
``[nf] replicate`` every packet is copied to its secondary and every batch
is committed by 2PC before release. Printed: latency at 10 kpps (after a
warm-up) and the highest zero-loss rate of each, the searches advancing in
turn (see e2e_rates.py), and the on/off ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_rates import RateSearch, latency_at, trial  # noqa: E402

from deft.tools.localnode import (  # noqa: E402
    LocalController,
    LocalNode,
    controller_config,
    free_port,
    node_config,
    to_toml,
    write_config,
)


def consecutive_ports() -> int:
    for _ in range(50):
        p = free_port(socket.SOCK_STREAM)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise SystemExit("no two consecutive free ports")


class Cluster:
    def __init__(self, tmp: Path, name: str, replicate: bool):
        self.name = name
        cfg = controller_config(heartbeat_ms=10, miss_limit=10)
        (tmp / f"{name}-controller.toml").write_text(to_toml(cfg))
        self.ctl = LocalController.start(tmp / f"{name}-controller.toml")
        self.listen = f"udp://127.0.0.1:{free_port()}"
        self.nodes = []
        for n in (1, 2):
            node_id = f"{name}{os.getpid()}n{n}"
            conf = node_config(node_id, "nat", 2, {"public_ip": f"203.0.113.{n}"}, egress={"send_to": self.listen},
                               node={"controller": cfg["controller"]["heartbeats"],
                                     "fabric": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                                     "replication": f"tcp://127.0.0.1:{consecutive_ports()}"},
                               nf={"replicate": replicate},
                               **({"ingress": {"listen": "none"}} if n == 2 else {}))
            self.nodes.append(LocalNode.start(write_config(tmp / f"{node_id}.toml", conf)))
        for node in self.nodes:
            node.wait_ready()
        self.ctl.wait_for(lambda st: any(e["event"] == "routes_pushed" and e["ok"] and len(e["nodes"]) == 2
                                         for e in st["events"]))
        self.to = self.nodes[0].ingress

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.ctl.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trial-seconds", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clusters = []
        try:
            clusters = [Cluster(Path(tmp), "off", False), Cluster(Path(tmp), "on", True)]
            lat = {}
            for c in clusters:
                trial(c.to, c.listen, 5_000, 1.0)  # warm-up: the flows exist before latency is measured
                lat[c.name] = latency_at(c.to, c.listen)
            searches = {c.name: RateSearch() for c in clusters}
            while not all(s.done for s in searches.values()):
                for c in clusters:
                    s = searches[c.name]
                    if not s.done:
                        rate = s.next_rate()
                        s.record(rate, trial(c.to, c.listen, rate, args.trial_seconds))
            for c in clusters:
                l = lat[c.name]
                print(f"secondaries {c.name:3s}: zero-loss {searches[c.name].good:>8,} pps   latency @10 kpps "
                      f"p50 {l.get('p50', float('nan')):6.0f} us  p99 {l.get('p99', float('nan')):6.0f} us  "
                      f"(lost {l['lost']})")
            off, on = searches["off"].good or 1, searches["on"].good
            print(f"\nreplication on / off zero-loss rate: {on / off:.2f}")
        finally:
            for c in clusters:
                c.stop()


if __name__ == "__main__":
    main()
