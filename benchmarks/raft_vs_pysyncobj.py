"""DEFT's Raft vs PySyncObj: commit throughput and latency on 3-member loopback clusters.

    .venv/bin/python benchmarks/raft_vs_pysyncobj.py [--ops 1000] [--window 200] [--lat-ops 300] [--json]

(PySyncObj comes with the ``bench`` extra: ``pip install -e '.[bench]'``.)

In one run, one cluster after the other: 3 members, each its own OS process
(``benchmarks/raft_member.py``) on 127.0.0.1 with free ports, driven by one client
(this process) through the leader over the same ZMQ request socket and orjson
messages on both sides, so both pay the same client overhead. What is measured is
pure replication: request in -> leader appends, replicates to the followers, commits
on a majority, applies -> reply; no deft-node, no control socket.

* DEFT: ``RaftCore`` + ``DiskStorage`` + ``RaftDriver`` (ZeroMQ) + ``KVStateMachine``
  (client sessions), tick 10 ms, election after 10-20 ticks, heartbeat every 2 ticks.
  An op is ``incr("bench", 1)`` under a (client, seq) session.
* PySyncObj: ``SyncObj`` with a ``@replicated`` ``incr``, ``journalFile`` and
  ``fullDumpFile`` in the member's directory, appendEntriesPeriod 10 ms, election
  timeout 100-200 ms, ``appendEntriesUseBatch=False`` (its low-latency mode: commands
  are sent at once instead of at the next appendEntriesPeriod; appends still carry every
  entry past the follower's next index, so it pipelines), driven by ``doTick`` from the
  member's single thread (no autoTick thread, as our driver is one thread too).

Figures, after ``--warmup`` one-at-a-time increments, over ``--rounds`` rounds (default 3)
of: ``--lat-ops`` increments one at a time (latency: p50 / p99 of the client's round trip,
over all rounds' samples), then ``--ops`` increments with up to ``--window`` outstanding
(throughput: first send to last reply; the median round is reported). Ratio = DEFT / PySyncObj (>1 means
DEFT has more throughput, or a higher latency). The last increment's result must equal
the number of increments sent, or the run fails.

What each side makes durable (the same: the page cache, never the disk):

* PySyncObj (0.3.17, read in its source) has no fsync option and never calls
  ``os.fsync``/``msync`` while running. ``FileJournal`` appends each entry to an mmap of
  ``journalFile`` (a store into the page cache, before the follower acks); term and vote
  go to ``journalFile.meta`` synchronously by write + flush + rename (no fsync), the
  commit index at most once a second the same way; ``fullDumpFile`` is written only at
  log compaction (after 5000 entries or 300 s, not reached here), also without fsync.
  It survives a process crash, not a power loss or kernel crash.
* DEFT runs ``DiskStorage(fsync=False)`` to match: each Ready's entries (and a commit
  mark when only the commit moved) are one ``write`` + ``flush`` of ``raft.log`` into the
  page cache before any message goes out; term/vote are written to a temp file and
  renamed over ``hardstate`` (no fsync of the file or the directory). Also survives a
  process crash, not a power loss. ``--deft-fsync`` turns DEFT's fsync on (one
  ``fsync(raft.log)`` per Ready, plus file and directory fsyncs on term/vote changes):
  then DEFT pays for a durability PySyncObj does not offer and the ratio is not like for like.

Every member process is stopped by its PID (SIGTERM, then SIGKILL) in a ``finally``;
the temporary directory is removed; nothing is created in /dev/shm.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import zmq

from deft.tools.localnode import free_port

HERE = Path(__file__).resolve().parent
MEMBER = HERE / "raft_member.py"
IMPLS = ("deft", "pysyncobj")


class BenchError(RuntimeError):
    pass


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"


class Cluster:
    """Three member processes of one implementation, and a client socket per member."""

    def __init__(self, impl: str, root: Path, ctx: zmq.Context, fsync: bool) -> None:
        self.impl, self.root, self.ctx = impl, root, ctx
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.socks: dict[int, zmq.Socket] = {}
        raft = {n: tcp() for n in (1, 2, 3)}
        self.client_ep = {n: tcp() for n in (1, 2, 3)}
        spec = ",".join(f"{n}={ep}" for n, ep in raft.items())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for n in (1, 2, 3):
            cmd = [sys.executable, str(MEMBER), "--impl", impl, "--id", str(n),
                   "--dir", str(root / f"{impl}{n}"), "--raft", spec, "--client", self.client_ep[n]]
            if fsync:
                cmd.append("--fsync")
            with open(root / f"{impl}{n}.err", "wb") as err:
                self.procs[n] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        for n in (1, 2, 3):
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.connect(self.client_ep[n])
            self.socks[n] = s
        self._ids = itertools.count(1)

    def request(self, n: int, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        rid = next(self._ids)
        s = self.socks[n]
        s.send(orjson.dumps({**body, "id": rid}))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if s.poll(max(1, int(left * 1000))):
                rep = orjson.loads(s.recv())
                if rep.get("id") == rid:
                    return rep  # (older, timed-out answers are skipped)
        return None

    def wait_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            for n in (1, 2, 3):
                rep = self.request(n, {"op": "status"}, 0.2)
                if rep and rep.get("ready"):
                    return n
            time.sleep(0.05)
        raise BenchError(f"{self.impl}: no ready leader after {timeout} s")

    def check_alive(self) -> None:
        for n, p in self.procs.items():
            if p.poll() is not None:
                err = (self.root / f"{self.impl}{n}.err").read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.impl} member {n} exited with {p.returncode}:\n{err}")

    def stop(self) -> None:
        for s in self.socks.values():
            s.close(linger=0)
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)


class Driver:
    """The client: increments through the leader's request socket."""

    def __init__(self, cluster: Cluster, leader: int) -> None:
        self.c, self.leader = cluster, leader
        self.sock = cluster.socks[leader]
        self.sent = 0
        self.last_result = 0

    def _check(self, rep: dict[str, Any] | None) -> None:
        if rep is None:
            self.c.check_alive()
            raise BenchError(f"{self.c.impl}: no answer from the leader within 5 s")
        if "err" in rep:
            raise BenchError(f"{self.c.impl}: {rep['err']} (leadership moved during the run?)")
        if not isinstance(rep.get("result"), int):
            raise BenchError(f"{self.c.impl}: unexpected answer {rep}")
        self.last_result = max(self.last_result, rep["result"])

    def one_at_a_time(self, n: int, client: str) -> list[float]:
        lat = []
        for seq in range(1, n + 1):
            t = time.perf_counter()
            rep = self.c.request(self.leader, {"op": "incr", "client": client, "seq": seq}, 5.0)
            lat.append(time.perf_counter() - t)
            self._check(rep)
            self.sent += 1
        return lat

    def windowed(self, n: int, window: int, client: str) -> float:
        """Seconds for ``n`` increments with up to ``window`` outstanding (one session per slot)."""
        seqs = [0] * window
        slot_of: dict[int, int] = {}
        ids = itertools.count(10**9)

        def send(slot: int) -> None:
            rid = next(ids)
            seqs[slot] += 1
            slot_of[rid] = slot
            self.sock.send(orjson.dumps({"op": "incr", "client": f"{client}.{slot}", "seq": seqs[slot], "id": rid}))

        t0 = time.perf_counter()
        sent = done = 0
        for slot in range(min(window, n)):
            send(slot)
            sent += 1
        while done < n:
            if not self.sock.poll(5000):
                self._check(None)
            while True:
                try:
                    rep = orjson.loads(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                slot = slot_of.pop(rep["id"], None)
                if slot is None:
                    continue
                self._check(rep)
                done += 1
                if sent < n:
                    send(slot)
                    sent += 1
        elapsed = time.perf_counter() - t0
        self.sent += n
        return elapsed


def pct(sorted_xs: list[float], p: float) -> float:
    return sorted_xs[max(0, math.ceil(p * len(sorted_xs)) - 1)]


def measure(impl: str, args: argparse.Namespace, ctx: zmq.Context) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"deft-bench-{impl}-"))
    cluster = None
    try:
        cluster = Cluster(impl, root, ctx, args.deft_fsync and impl == "deft")
        t = time.monotonic()
        leader = cluster.wait_leader()
        startup = time.monotonic() - t
        d = Driver(cluster, leader)
        d.one_at_a_time(args.warmup, "warm")
        lat: list[float] = []
        tputs: list[float] = []
        for r in range(args.rounds):
            lat += d.one_at_a_time(args.lat_ops, f"lat{r}")
            tputs.append(args.ops / d.windowed(args.ops, args.window, f"win{r}"))
        cluster.check_alive()
        if d.last_result != d.sent:
            raise BenchError(f"{impl}: counter is {d.last_result} after {d.sent} increments")
        lat.sort()
        return {"throughput_ops_s": statistics.median(tputs), "throughput_rounds_ops_s": tputs,
                "latency_p50_us": statistics.median(lat) * 1e6, "latency_p99_us": pct(lat, 0.99) * 1e6,
                "latency_mean_us": statistics.fmean(lat) * 1e6, "latency_samples": len(lat),
                "leader": leader, "startup_seconds": startup, "increments": d.sent,
                "fsync": bool(args.deft_fsync and impl == "deft")}
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=1000, help="increments in the throughput run")
    ap.add_argument("--window", type=int, default=200, help="max outstanding increments (throughput)")
    ap.add_argument("--lat-ops", type=int, default=300, help="one-at-a-time increments (latency)")
    ap.add_argument("--warmup", type=int, default=50, help="one-at-a-time increments before measuring")
    ap.add_argument("--rounds", type=int, default=3,
                    help="latency + throughput rounds per cluster: throughput is their median, "
                         "latency percentiles are over all rounds' samples")
    ap.add_argument("--only", choices=IMPLS, help="run one side only (no ratio)")
    ap.add_argument("--deft-fsync", action="store_true",
                    help="DEFT with fsync on (PySyncObj cannot fsync: not like for like)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)
    if min(args.ops, args.window, args.lat_ops, args.rounds) < 1 or args.warmup < 0:
        ap.error("--ops, --window, --lat-ops and --rounds must be >= 1, --warmup >= 0")
    impls = (args.only,) if args.only else IMPLS
    if "pysyncobj" in impls:
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            print("pysyncobj is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    ctx = zmq.Context()
    try:
        results = {impl: measure(impl, args, ctx) for impl in impls}
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        ctx.term()
    out: dict[str, Any] = {
        "config": {"members": 3, "ops": args.ops, "window": args.window, "lat_ops": args.lat_ops,
                   "rounds": args.rounds, "warmup": args.warmup, "deft_fsync": args.deft_fsync, "pysyncobj_fsync": False},
        **results,
    }
    if len(results) == 2:
        de, ps = results["deft"], results["pysyncobj"]
        out["ratio_deft_over_pysyncobj"] = {k: de[k] / ps[k] for k in (
            "throughput_ops_s", "latency_p50_us", "latency_p99_us")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    fs = "fsync on" if args.deft_fsync else "no fsync, like PySyncObj"
    print(f"3-member loopback clusters, one process per member; DEFT {fs}")
    print(f"{'':<42}" + "".join(f"{i:>14}" for i in (*impls, *(["DEFT/PSO"] if len(impls) == 2 else []))))
    rows = [(f"throughput ({args.ops} ops, <={args.window} out)", "throughput_ops_s", "ops/s", "{:.0f}"),
            (f"latency p50 ({args.lat_ops} ops x {args.rounds}, 1 at a time)", "latency_p50_us", "us", "{:.0f}"),
            ("latency p99", "latency_p99_us", "us", "{:.0f}")]
    for label, key, unit, f in rows:
        cells = [f.format(results[i][key]) + f" {unit}" for i in impls]
        if len(impls) == 2:
            cells.append(f"{out['ratio_deft_over_pysyncobj'][key]:.2f}x")
        print(f"{label:<42}" + "".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
