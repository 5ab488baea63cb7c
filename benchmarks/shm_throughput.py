"""Node throughput through the local shm input and output (no system call per packet).

    .venv/bin/python benchmarks/shm_throughput.py [--kind nat] [--instances 2] [--seconds 5]

Starts a real deft-node whose ingress is ``shm://`` and whose egress is
``shm://``, fills the input ring with pre-built frames of --flows flows as
fast as it takes them, drains the output ring, and prints the packets per
second that came out, with the node's own counters as a cross-check. Every
process is stopped and the node's shared memory removed at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from deft.runtime.config import load_config
from deft.runtime.dataplane.frames import build_frame
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.errors import RingError
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.topology import Topology
from deft.tools.localnode import LocalNode, node_config, write_config


def frames(flows: int, size: int) -> np.ndarray:
    recs = empty_batch(flows)
    for f in range(flows):
        frame = build_frame(0x0A000000 + f, 0xC6336401, 17, 1024 + f, 53, b"x" * (size - 42))
        recs["frame"][f, : len(frame)] = np.frombuffer(frame, np.uint8)
        recs["frame_len"][f] = len(frame)
        recs["vni"][f] = 7
    return recs


def attach(topo: Topology, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (Ring.attach(topo.shm_input(), PACKET_DTYPE), Ring.attach(topo.shm_output(), PACKET_DTYPE),
                    FdBell.attach(topo.ingress_bell()))
        except RingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def role_pids(st: dict) -> dict[str, int]:
    pids = {"ingress": st["ingress"]["pid"], "egress": st["egress"]["pid"]}
    pids.update({f"unit{u['index']}": u["pid"] for u in st["units"]})
    pids.update({f"nf{i['index']}": i["pid"] for i in st["instances"]})
    return pids


def run(kind: str, instances: int, units: int, seconds: float, flows: int, size: int, batch: int) -> dict:
    node_id = f"shmbench{os.getpid()}"
    params = {"nat": {"public_ip": "203.0.113.1"}, "loadbalancer": {"backends": ["192.0.2.10", "192.0.2.11"]}}
    config = node_config(node_id, kind, instances, params.get(kind, {}),
                         ingress={"listen": "shm://in", "stamping_units": units}, egress={"send_to": "shm://out"},
                         nf={"batch_size": batch, "buffer_batches": 32, "flush_us": 200})
    with tempfile.TemporaryDirectory() as tmp:
        node = LocalNode.start(write_config(Path(tmp) / "node.toml", config))
        try:
            node.wait_ready()
            topo = Topology(load_config(node.config_path))
            in_ring, out_ring, bell = attach(topo)
            pids = role_pids(node.status())
            cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            source = frames(flows, size)
            chunk = np.concatenate([source] * max(1, 256 // flows))[:256]
            sent = received = 0
            start = time.perf_counter()
            end = start + seconds
            while time.perf_counter() < end:
                pushed = in_ring.push_some(chunk)
                sent += pushed
                bell.ring()
                view = out_ring.peek(4096)
                received += len(view)
                out_ring.release(len(view))
                if pushed < len(chunk) and len(view) == 0:
                    time.sleep(0.0002)  # the node is the bottleneck: do not steal its core
            elapsed = time.perf_counter() - start
            cpu = {role: cpu_seconds(pid) - cpu_before[role] for role, pid in pids.items()}
            drain_end = time.monotonic() + 2
            while received < sent and time.monotonic() < drain_end:
                view = out_ring.peek(4096)
                received += len(view)
                out_ring.release(len(view))
            st = node.status()
            in_ring.close()
            out_ring.close()
            bell.close()
        finally:
            node.stop()
    return {"kind": kind, "instances": instances, "units": units, "sent": sent, "received": received,
            "pps": received / elapsed,
            "cpu_us_per_packet": {r: round(c / max(received, 1) * 1e6, 2) for r, c in cpu.items()},
            "ingress": st["ingress"]["counters"],
            "nf_drops": sum(i["counters"]["dropped_by_nf"] for i in st["instances"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="nat")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--units", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flows", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    r = run(args.kind, args.instances, args.units, args.seconds, args.flows, args.size, args.batch)
    print(f"shm input -> {r['kind']} x{r['instances']} (batch {args.batch}) -> shm output: "
          f"{r['pps'] / 1e3:.0f} kpps  (sent {r['sent']}, received {r['received']}, "
          f"ingress drops {r['ingress']['dropped'] + r['ingress']['unit_ring_full']}, nf drops {r['nf_drops']})")
    print("  CPU us per delivered packet: " + "  ".join(f"{k} {v}" for k, v in r["cpu_us_per_packet"].items()))


if __name__ == "__main__":
    main()
