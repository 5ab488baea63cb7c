"""End-to-end through VXLAN: highest zero-loss rate and latency at 10 kpps, side by side.

    .venv/bin/python benchmarks/e2e_rates.py [--trial-seconds 2] [--json FILE]

Three devices are measured in one run, with the same generator, flows and
packet sizes, so their ratios are comparable on a shared, noisy machine:

  loopback   deft-trafficgen sending straight to its own receiver (the harness ceiling)
  reference  benchmarks/reference_nat.py: one process, per-packet Python NAT
  deft       a real deft-node: NAT on 2 instances, 1 stamping unit, batch 64

Zero-loss rate: rates grow by 25 % from 10 kpps until a trial loses a packet,
then three bisection steps between the last clean and the first lossy rate.
Each trial sends ``rate x trial-seconds`` packets over 500 flows (half TCP).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from deft.runtime.ring import cleanup_node
from deft.tools import trafficgen
from deft.tools.localnode import LocalNode, free_port, node_config, write_config

HERE = Path(__file__).resolve().parent


def trial(to: str, listen: str, rate: int, seconds: float, flows: int = 500) -> dict:
    packets = max(int(rate * seconds), 1000)
    return trafficgen.run(["--to", to, "--listen", listen, "--rate", str(rate), "--packets", str(packets),
                           "--flows", str(flows), "--drain-ms", "300", "--quiet"])


def zero_loss_rate(to: str, listen: str, seconds: float, start: int = 10_000, limit: int = 400_000) -> dict:
    good, bad = 0, None
    rate = start
    trials = []
    while rate <= limit:
        r = trial(to, listen, rate, seconds)
        trials.append((rate, r["lost"], r["reordered"]))
        if r["lost"] == 0 and r["reordered"] == 0:
            good = rate
            rate = int(rate * 1.25)
        else:
            bad = rate
            break
    if bad is not None:
        for _ in range(3):
            mid = (good + bad) // 2
            if mid <= good or mid >= bad:
                break
            r = trial(to, listen, mid, seconds)
            trials.append((mid, r["lost"], r["reordered"]))
            if r["lost"] == 0 and r["reordered"] == 0:
                good = mid
            else:
                bad = mid
    return {"zero_loss_pps": good, "first_lossy_pps": bad, "trials": trials}


def latency_at(to: str, listen: str, rate: int = 10_000, seconds: float = 3.0) -> dict:
    r = trial(to, listen, rate, seconds)
    return {"rate": rate, "lost": r["lost"], **(r["latency_us"] or {})}


class Device:
    """A process under test that forwards from ``to`` to ``listen``."""

    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.node: LocalNode | None = None
        self.to = self.listen = ""

    def stop(self) -> None:
        if self.node:
            self.node.stop()
        elif self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_loopback() -> Device:
    d = Device("loopback")
    d.to = d.listen = f"udp://127.0.0.1:{free_port()}"
    return d


def start_reference() -> Device:
    d = Device("reference")
    d.to, d.listen = f"udp://127.0.0.1:{free_port()}", f"udp://127.0.0.1:{free_port()}"
    d.proc = subprocess.Popen([sys.executable, str(HERE / "reference_nat.py"), "--listen", d.to,
                               "--send-to", d.listen, "--public-ip", "203.0.113.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    d.proc.stderr.readline()  # "listening ..."
    return d


def start_deft(tmp: Path, node_id: str) -> Device:
    d = Device("deft")
    config = node_config(node_id, "nat", 2, nf={"batch_size": 64, "buffer_batches": 32, "flush_us": 200})
    node = LocalNode.start(write_config(tmp / "node.toml", config))
    d.to, d.listen, d.proc = node.ingress, node.egress, node.proc
    d.node = node
    node.wait_ready()
    return d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trial-seconds", type=float, default=2.0)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    node_id = f"e2e{os.getpid()}"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for starter in (start_loopback, start_reference, lambda: start_deft(Path(tmp), node_id)):
            device = starter()
            try:
                lat = latency_at(device.to, device.listen)
                rate = zero_loss_rate(device.to, device.listen, args.trial_seconds)
                results[device.name] = {**rate, "latency_10kpps_us": lat}
                print(f"{device.name:10s} zero-loss {rate['zero_loss_pps']:>8,} pps   latency @10 kpps "
                      f"p50 {lat.get('p50', float('nan')):7.0f} us  p99 {lat.get('p99', float('nan')):7.0f} us",
                      flush=True)
            finally:
                device.stop()
        cleanup_node(node_id)
    ref = results["reference"]["zero_loss_pps"] or 1
    print(f"\nDEFT / reference zero-loss rate: {results['deft']['zero_loss_pps'] / ref:.2f}   "
          f"(harness ceiling {results['loopback']['zero_loss_pps']:,} pps)")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
