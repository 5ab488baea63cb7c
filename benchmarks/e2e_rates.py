"""End-to-end through VXLAN: highest zero-loss rate and latency at 10 kpps, side by side.

    .venv/bin/python benchmarks/e2e_rates.py [--trial-seconds 2] [--json FILE]

Three devices are measured in one run, with the same generator, flows and
packet sizes, so their ratios are comparable on a shared, noisy machine:

  loopback   deft-trafficgen sending straight to its own receiver (the harness ceiling)
  reference  benchmarks/reference_nat.py: one process, per-packet Python NAT
  deft       a real deft-node: NAT on 2 instances, 1 stamping unit, batch 64

Zero-loss rate: rates grow by 25 % from 10 kpps until a trial loses a packet,
then three bisection steps between the last clean and the first lossy rate.
The three searches advance in turn, one trial each per round, so that the
machine's background load falls on all of them alike.
Each trial sends ``rate x trial-seconds`` packets over 500 flows (half TCP).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from deft.runtime.ring import cleanup_node
from deft.tools import trafficgen
from deft.tools.localnode import LocalNode, free_port, node_config, stop_process, write_config

HERE = Path(__file__).resolve().parent


def trial(to: str, listen: str, rate: int, seconds: float, flows: int = 500) -> dict:
    packets = max(int(rate * seconds), 1000)
    return trafficgen.run(["--to", to, "--listen", listen, "--rate", str(rate), "--packets", str(packets),
                           "--flows", str(flows), "--drain-ms", "300", "--quiet"])


def clean(report: dict) -> bool:
    return report["lost"] == 0 and report["reordered"] == 0


class RateSearch:
    """Zero-loss rate search for one device, advanced one trial at a time.

    Rates grow by 25 % from ``start`` until a trial loses or reorders a
    packet, then three bisection steps. Stepping the devices' searches in turn
    (not one device after the other) gives them the same background noise.
    """

    def __init__(self, start: int = 10_000, limit: int = 400_000):
        self.good, self.bad, self.rate, self.limit = 0, None, start, limit
        self.bisections = 0
        self.trials: list[tuple[int, int, int]] = []

    @property
    def done(self) -> bool:
        if self.bad is None:
            return self.rate > self.limit
        return self.bisections >= 3 or self.next_rate() in (self.good, self.bad)

    def next_rate(self) -> int:
        return self.rate if self.bad is None else (self.good + self.bad) // 2

    def record(self, rate: int, report: dict) -> None:
        self.trials.append((rate, report["lost"], report["reordered"]))
        if self.bad is not None:
            self.bisections += 1
        if clean(report):
            self.good = rate
            if self.bad is None:
                self.rate = int(rate * 1.25)
        else:
            self.bad = rate


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
        elif self.proc:
            stop_process(self.proc)


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
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        devices = [start_loopback(), start_reference(), start_deft(Path(tmp), node_id)]
        try:
            for d in devices:  # latency first, each at 10 kpps, after a warm-up that creates the flows
                trial(d.to, d.listen, 5_000, 1.0)
                results[d.name] = {"latency_10kpps_us": latency_at(d.to, d.listen)}
            searches = {d.name: RateSearch() for d in devices}
            while not all(s.done for s in searches.values()):
                for d in devices:  # one trial per device per round: they share the machine's mood
                    search = searches[d.name]
                    if not search.done:
                        rate = search.next_rate()
                        search.record(rate, trial(d.to, d.listen, rate, args.trial_seconds))
            for d in devices:
                s, lat = searches[d.name], results[d.name]["latency_10kpps_us"]
                results[d.name].update(zero_loss_pps=s.good, first_lossy_pps=s.bad, trials=s.trials)
                print(f"{d.name:10s} zero-loss {s.good:>8,} pps   latency @10 kpps "
                      f"p50 {lat.get('p50', float('nan')):7.0f} us  p99 {lat.get('p99', float('nan')):7.0f} us",
                      flush=True)
        finally:
            for d in devices:
                d.stop()
            cleanup_node(node_id)
    ref = results["reference"]["zero_loss_pps"] or 1
    print(f"\nDEFT / reference zero-loss rate: {results['deft']['zero_loss_pps'] / ref:.2f}   "
          f"(harness ceiling {results['loopback']['zero_loss_pps']:,} pps)")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
