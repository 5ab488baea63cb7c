"""Where a replicated packet's CPU goes: py-spy on one worker and the io of examples/cluster's node1.

    .venv/bin/python benchmarks/profile_cluster.py [--rate 1000] [--seconds 10] [--out DIR]
    .venv/bin/python benchmarks/profile_cluster.py --round-costs [--rate 1000] [--seconds 10]

``--round-costs``: no py-spy; every worker and io of the cluster times the phases of its rounds in
CPU (``runtime/roundcost.py``), and the tables printed are rounds and CPU per round by what woke
the round and by phase, summed over the six workers and over the three io processes, for the whole
run at ``--rate``.

Starts examples/cluster as ``benchmarks/efficiency.py`` does (fresh ports, one
device alone), warms it up, runs the generator at ``--rate`` and meanwhile
records node1's first worker and its io with ``py-spy record --native`` (raw
folded stacks in ``--out``). Then prints, per process, the share of samples
in each phase of the process's loop and the leaves under them. Samples where
the process sleeps in ``poll()`` or ``select()`` are left out: py-spy counts a
thread blocked in a C call as active. What is left is wall time on the way to
the CPU, not CPU time: on a loaded machine a runnable process waiting for a
core is sampled too, so read the shares, not the totals.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import efficiency as eff

LOOPS = {"worker": "Worker.run", "io": "IoProcess.round"}   # each process's loop: its callees are its phases
SLEEPS = ("poll ", "select ", "epoll_wait ", "ppoll ")      # a native leaf where the process sleeps


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--native", "-r", "250", "-d", str(seconds), "-f", "raw",
                             "-o", str(out), "-p", str(pid)], stdout=subprocess.DEVNULL)


def breakdown(path: Path, loop: str) -> None:
    phases, leaves, active = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if frames[-1].startswith(SLEEPS):
            continue   # asleep in zmq_poll, select or a bell's wait
        active += int(n)
        py = [f.split(" (")[0] for f in frames if ".py:" in f]
        if loop in py and py.index(loop) + 1 < len(py):
            phases[py[py.index(loop) + 1]] += int(n)
        native = "" if ".py:" in frames[-1] else f" [{frames[-1].split(' (')[0][:32]}]"
        leaves[(py[-1] if py else "?") + native] += int(n)
    print(f"{path.name}: {active} samples on the CPU")
    for name, n in phases.most_common(8):
        print(f"  {100 * n / max(active, 1):5.1f}%  {name}")
    print("  leaves:")
    for name, n in leaves.most_common(12):
        print(f"  {100 * n / max(active, 1):5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="profile_cluster.py")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("profile-out"))
    ap.add_argument("--round-costs", action="store_true", help="CPU per worker round by cause and phase")
    args = ap.parse_args(argv)
    if args.round_costs:
        return round_costs(args.rate, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dev = eff.start_devices(["cluster"], tmp)["cluster"]
        try:
            eff.run_traffic(dev, tmp, 2000, eff.FLOWS)   # warm-up: every flow created once
            names = {pid: eff.process_name(pid) for pid in eff.descendants(dev.roots())}
            targets = {kind: min(pid for pid, name in names.items()
                                 if "node1/" in name and f"/{kind}" in name and "standby" not in name)
                       for kind in LOOPS}
            traffic = threading.Thread(target=eff.run_traffic,
                                       args=(dev, tmp, args.rate, args.rate * (args.seconds + 3)))
            traffic.start()
            time.sleep(1.5)
            spies = {kind: record(pid, args.seconds, args.out / f"{kind}-{args.rate}pps.txt")
                     for kind, pid in targets.items()}
            for spy in spies.values():
                spy.wait()
            traffic.join()
        finally:
            dev.stop()
    for kind, loop in LOOPS.items():
        breakdown(args.out / f"{kind}-{args.rate}pps.txt", loop)
    return 0


def round_costs(rate: int, seconds: int) -> int:
    import os

    from deft.runtime.roundcost import ENV, table

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        costs = tmp / "costs"
        costs.mkdir()
        os.environ[ENV] = str(costs)   # inherited by the nodes, their supervisors and workers
        try:
            dev = eff.start_devices(["cluster"], tmp)["cluster"]
        finally:
            del os.environ[ENV]
        try:
            # warm-up: every flow created once (its rounds are in the table too: the workers write
            # their costs only when they stop)
            eff.run_traffic(dev, tmp, 2000, eff.FLOWS)
            report, _ = eff.run_traffic(dev, tmp, rate, rate * seconds)
        finally:
            dev.stop()   # each worker writes its file as it stops
        print(f"examples/cluster at {rate} pps for {seconds} s after a warm-up of {eff.FLOWS} packets (in the "
              f"table too): {report['received']} packets out, latency p50 {report['latency_us']['p50'] / 1000:.2f} ms")
        for role, title in (("worker", "the workers' main threads"), ("io", "the io processes")):
            print(f"CPU of {title} per round, by what woke the round and by phase (us):")
            for line in table(sorted(str(p) for p in costs.iterdir() if f".{role}" in p.name)):
                print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
