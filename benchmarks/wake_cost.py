"""What a wake-up costs a Python process here: one packet's NAT round, hot and after a sleep.

    .venv/bin/python benchmarks/wake_cost.py [--rounds 1000]

At low load every hop of a replicated packet is a process that slept, woke for
one or two packets and went back to sleep. This measures the CPU time (the
thread's own, ``CLOCK_THREAD_CPUTIME_ID``) of the same work, a worker's
``PairSlot.process`` + ``take_output`` on one packet of an established NAT flow,
run:

  hot          back to back
  sleep 100us  after sleeping 100 microseconds
  sleep 5ms    after sleeping 5 ms (a worker at 200 pps sleeps about this long)
  spin 5ms     after 5 ms of busy waiting in the same thread (no sleep)

each through the NAT's few-packet path (Python integers, ``nfs/checksum.py``
FEW) and its column path (numpy), interleaved round by round so that the
machine's background falls on both alike. Then rounds of 1 to 16 packets hot
through both (where the Python path stops paying: FEW), and 40 small numpy
calls against 40 comparable Python operations, hot and after a 5 ms sleep.

What it showed on the 2-vCPU Firecracker VM this project runs on (one run,
medians): the column path 110 us hot, 155 us after a 100 us sleep, 279 us
after a 5 ms sleep and 272 us after a 5 ms spin; the few-packet path 46, 75,
131 and 139 us. Whatever ran meanwhile, sleeping or not, left the caches cold,
and a cold round costs about 3 times a hot one; 40 small numpy calls 94 us hot
and 150 us cold, 40 Python operations 12 and 39 us. Per-packet CPU at low rates
is therefore wake-ups per packet times the cost of a cold round, not the work
per packet (README, "Where the time goes").
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from deft.nfs import checksum
from deft.nfs import nat as nat_module
from deft.runtime.config import load_config
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import IPPROTO_TCP, IPPROTO_UDP
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.dataplane.stamper import Stamper
from deft.runtime.worker.pairslot import PairSlot

ROOT = Path(__file__).resolve().parent.parent
FLOWS = 64
WAITS = ("hot", "sleep 100us", "sleep 5ms", "spin 5ms")


def flows() -> np.ndarray:
    """One stamped packet per flow (TCP and UDP), as the worker gets them from its ring."""
    frames = [vxlan_wrap(build_frame(0x0A000000 + f, 0xC6336401, IPPROTO_TCP if f % 3 == 0 else IPPROTO_UDP,
                                     1024 + f, 443, b"p" * 86), 7) for f in range(FLOWS)]
    recs, drops = records_from_datagrams(frames)
    assert not drops.any()
    Stamper(0, capacity=4 * FLOWS).stamp(recs)
    recs["pair"] = 0
    return recs


class Round:
    """A worker's pair slot fed one packet per round, each the next seq of one of FLOWS flows."""

    def __init__(self, few: bool):
        self.few = few
        self.slot = PairSlot(load_config(ROOT / "examples" / "node1.toml"), 0, 1, logging.getLogger("wake_cost"))
        self.template = flows()
        self.k = 0
        for _ in range(2 * FLOWS):   # every flow mapped: the rounds measured see established flows
            self.run()

    def run(self, n: int = 1) -> int:
        """One round of ``n`` packets (the next seqs of the next flows); its CPU time in nanoseconds."""
        batch = np.empty(n, dtype=self.template.dtype)   # the records' own layout, as a ring's peek gives
        for j in range(n):
            i, self.k = self.k % FLOWS, self.k + 1
            batch[j: j + 1] = self.template[i: i + 1]
            batch["seq"][j] = self.k // FLOWS + 1
        batch["ts_ns"] = time.monotonic_ns()
        saved = nat_module.FEW, checksum.FEW
        nat_module.FEW = checksum.FEW = max(n, 1) if self.few else 0
        try:
            start = time.thread_time_ns()
            self.slot.process(batch)
            out, _ = self.slot.take_output()
            took = time.thread_time_ns() - start
        finally:
            nat_module.FEW, checksum.FEW = saved
        if len(out) != n:
            raise SystemExit(f"wake_cost: a round released {len(out)} packets, expected {n}")
        return took


def wait(kind: str) -> None:
    if kind == "sleep 100us":
        time.sleep(0.0001)
    elif kind == "sleep 5ms":
        time.sleep(0.005)
    elif kind == "spin 5ms":
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass


def numpy_ops(a: np.ndarray, b: np.ndarray) -> None:
    for _ in range(10):
        a["ts_ns"].max()
        (b == 2).any()
        np.flatnonzero(b > 1)
        a["verdict"] = 1


def python_ops(a: np.ndarray, b: np.ndarray) -> None:
    d: dict[int, int] = {}
    for i in range(10):
        d[i] = int(a["ts_ns"][0]) + 1
        _ = d.get(i, 0) > 2
        _ = [j for j in range(4) if j > 1]
        _ = i in d


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wake_cost.py", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=600, help="rounds per cell (the 5 ms cells take 5 ms each)")
    args = ap.parse_args(argv)
    paths = {"few-packet path": Round(few=True), "column path": Round(few=False)}
    print(f"one packet through PairSlot.process (NAT), CPU time per round, median of {args.rounds}:")
    print(f"  {'':16s}" + "".join(f"{w:>13s}" for w in WAITS))
    cells = {(p, w): [] for p in paths for w in WAITS}
    for _ in range(args.rounds):
        for w in WAITS:
            for name, r in paths.items():
                if w == "hot":
                    r.run()   # the round before warms it: hot means right after the same work
                wait(w)
                cells[(name, w)].append(r.run())
    for name in paths:
        print(f"  {name:16s}" + "".join(f"{median_us(cells[(name, w)]):10.1f} us" for w in WAITS))
    print("n packets through it hot, median CPU time per round (where the Python path stops paying):")
    for n in (1, 4, 8, 12, 16):
        samples = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, r in paths.items():
                samples[name].append(r.run(n))
        print(f"  {n:3d} packets  " + "   ".join(f"{name} {median_us(samples[name]):6.1f} us" for name in paths))
    a, b = np.zeros(1, dtype=paths["column path"].template.dtype), np.arange(4)
    print("40 small operations, CPU time per call of the set:")
    for label, fn in (("numpy", numpy_ops), ("python", python_ops)):
        row = []
        for w in ("hot", "sleep 5ms"):
            samples = []
            for _ in range(args.rounds):
                wait(w)
                start = time.thread_time_ns()
                fn(a, b)
                samples.append(time.thread_time_ns() - start)
            row.append(f"{w}: {median_us(samples):6.1f} us")
        print(f"  {label:8s}" + "   ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
