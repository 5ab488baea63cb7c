"""Global-state Raft on three real deft-node processes: leader failover time and commit latency.

    .venv/bin/python benchmarks/raft_failover.py [--kills 5] [--ops 200]

Failover time = kill -9 of the leader's whole node to the first write
committed by the new leader (the client retries every millisecond, at each
survivor in turn). Commit latency = a single ``incr`` through deft-ctl's
request path (control socket -> propose -> applied -> reply), p50 and p99,
one at a time. Every process is stopped by PID; Raft data lives in a
temporary directory (fsync on).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from deft.tools.ctl import NoAnswer, query
from deft.tools.localnode import LocalNode, free_port, node_config, write_config


def leader_of(nodes: dict[int, LocalNode], timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k, node in nodes.items():
            try:
                if node.status(300)["raft"]["role"] == "leader":
                    return k
            except NoAnswer:
                pass
        time.sleep(0.01)
    raise SystemExit("no leader")


def incr(node: LocalNode, key: str) -> bool:
    try:
        return bool(query(node.control, {"cmd": "global_op", "op": "incr", "key": key, "args": [1]}, 500).get("ok"))
    except NoAnswer:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--ops", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        members = {n: f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}" for n in (1, 2, 3)}
        paths = {n: write_config(tmp_path / f"n{n}.toml", node_config(
            f"rb{os.getpid()}n{n}", "flowcounter", 1, {},
            raft={"id": n, "members": members, "data_dir": str(tmp_path / f"raft{n}")})) for n in (1, 2, 3)}
        nodes = {n: LocalNode.start(p) for n, p in paths.items()}
        try:
            for node in nodes.values():
                node.wait_ready()
            lead = leader_of(nodes)
            latencies = []
            for _ in range(args.ops):
                t = time.perf_counter()
                assert incr(nodes[lead], "bench")
                latencies.append((time.perf_counter() - t) * 1e6)
            latencies.sort()
            print(f"commit latency (one incr at a time, {args.ops} ops): p50 {statistics.median(latencies):.0f} us, "
                  f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.0f} us")
            failovers = []
            for _ in range(args.kills):
                lead = leader_of(nodes)
                victim = nodes[lead]
                t0 = time.monotonic()
                os.kill(victim.pid, 9)
                survivors = [n for k, n in nodes.items() if k != lead]
                done = False
                while not done and time.monotonic() - t0 < 10:
                    for node in survivors:
                        if incr(node, "bench"):
                            done = True
                            break
                    time.sleep(0.001)
                failovers.append((time.monotonic() - t0) * 1000)
                victim.proc.wait(10)
                victim.stop()
                nodes[lead] = LocalNode.start(paths[lead])   # back from its disk
                nodes[lead].wait_ready()
            print(f"leader failover (kill -9 of the leader's node -> first commit), {args.kills} kills: "
                  f"p50 {statistics.median(failovers):.0f} ms, max {max(failovers):.0f} ms "
                  f"(election timeout 10-20 ticks of 10 ms)")
        finally:
            for node in nodes.values():
                node.stop()


if __name__ == "__main__":
    main()
