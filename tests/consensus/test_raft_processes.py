"""Real processes over ZeroMQ on loopback: kill -9, SIGSTOP, failpoints, then the same checks.

Three ``raft_proc`` members with DiskStorage (fsync on). Logical clients run a
put/get(ReadIndex)/CAS workload with timeouts and retries under the same
session seq while the test kills (-9), pauses (SIGSTOP), isolates (SIGUSR1:
the member drops all Raft traffic) and restarts members, and failpoints kill
them right after persisting. Afterwards: every member restarted, the
history must be linearizable and all members must reach the same applied
index and state hash. Bounded in time; every process started is killed.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from .linearizability import INFO, OK, Op, check_kv_history

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
IDS = (1, 2, 3)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, tmp: Path, failpoints: str) -> None:
        ports = free_ports(2 * len(IDS))
        self.raft = {i: f"tcp://127.0.0.1:{ports[k]}" for k, i in enumerate(IDS)}
        self.client = {i: f"tcp://127.0.0.1:{ports[len(IDS) + k]}" for k, i in enumerate(IDS)}
        self.tmp, self.failpoints = tmp, failpoints
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, nid: int) -> None:
        peers = ",".join(f"{i}={e}" for i, e in self.raft.items())
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DEFT_RAFT_FAILPOINTS": self.failpoints}
        log = open(self.tmp / f"n{nid}.log", "ab")  # noqa: SIM115 - owned by the process
        self.procs[nid] = subprocess.Popen(
            [sys.executable, "-m", "tests.consensus.raft_proc", "--id", str(nid),
             "--dir", str(self.tmp / f"n{nid}"), "--raft", self.raft[nid],
             "--client", self.client[nid], "--peers", peers],
            cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()

    def alive(self, nid: int) -> bool:
        return self.procs[nid].poll() is None

    def signal(self, nid: int, sig: int) -> None:
        if self.alive(nid):
            os.kill(self.procs[nid].pid, sig)
            if sig == signal.SIGKILL:
                self.procs[nid].wait(5)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(5)


class Clients:
    """Logical clients sharing one DEALER per member; one operation each at a time."""

    def __init__(self, ctx: zmq.Context, cluster: Cluster, n: int, rng: random.Random) -> None:
        self.rng, self.rids = rng, itertools.count(1)
        self.socks = {}
        for i, endpoint in cluster.client.items():
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.setsockopt(zmq.IMMEDIATE, 1)
            s.connect(endpoint)
            self.socks[i] = s
        self.poller = zmq.Poller()
        for s in self.socks.values():
            self.poller.register(s, zmq.POLLIN)
        self.state = [{"name": f"c{k}", "seq": 0, "op": None, "target": 1,
                       "retry_at": 0.0} for k in range(n)]
        self.by_rid: dict[int, tuple[dict[str, Any], int]] = {}  # request id -> (client, seq)
        self.history: list[Op] = []
        self.statuses: dict[int, dict[str, Any]] = {}
        self.clock = itertools.count(1)

    def send(self, nid: int, body: dict[str, Any]) -> bool:
        try:
            self.socks[nid].send(orjson.dumps(body), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # member down: IMMEDIATE refuses to queue

    def status(self) -> None:
        for nid in self.socks:
            self.send(nid, {"id": -nid, "op": "status"})

    def step(self, now: float, issue: bool) -> None:
        for c in self.state:
            if c["op"] is None and issue:
                self._new_op(c)
            if c["op"] is not None and now >= c["retry_at"]:
                self._attempt(c, now)
        for sock, _ in self.poller.poll(5):
            while True:
                try:
                    self._on_reply(orjson.loads(sock.recv(zmq.NOBLOCK)), now)
                except zmq.Again:
                    break

    def _new_op(self, c: dict[str, Any]) -> None:
        c["seq"] += 1
        key = self.rng.choice(("x", "y"))
        kind = self.rng.choice(("put", "get", "compare_and_set"))
        value = f"{c['name']}-{c['seq']}"
        args = {"put": (value,), "get": (), "compare_and_set": (c.get(key), value)}[kind]
        c["op"] = Op(c["name"], key, kind, args, call=next(self.clock))
        c["retry_at"] = 0.0  # send now

    def _attempt(self, c: dict[str, Any], now: float) -> None:
        op, rid = c["op"], next(self.rids)
        if op.kind == "get":
            body = {"id": rid, "op": "read", "key": op.key}
        else:
            body = {"id": rid, "op": "cmd", "client": c["name"], "seq": c["seq"], "kind": op.kind,
                    "key": op.key, "args": list(op.args)}
        self.by_rid[rid] = (c, c["seq"])
        if not self.send(c["target"], body):
            c["target"] = self.rng.choice(IDS)
            c["retry_at"] = now + 0.02
            return
        c["retry_at"] = now + 0.5  # timeout: retry elsewhere, same seq

    def _on_reply(self, r: dict[str, Any], now: float) -> None:
        if r["id"] < 0:
            self.statuses[-r["id"]] = r
            return
        c, seq = self.by_rid.pop(r["id"], (None, 0))
        if c is None or c["op"] is None or seq != c["seq"]:
            return  # a late answer to an operation that already finished
        if "err" in r:
            hint = r.get("hint")
            c["target"] = hint if hint is not None else self.rng.choice(IDS)
            c["retry_at"] = now + 0.02
            return
        op = c["op"]
        op.ret, op.output, op.status = next(self.clock), r["result"], OK
        if op.kind == "get":
            c[op.key] = r["result"]
        elif op.kind == "put" or r["result"] is True:
            c[op.key] = op.args[-1]
        self.history.append(op)
        c["op"] = None

    def finish(self) -> list[Op]:
        for c in self.state:
            if c["op"] is not None:
                c["op"].status = INFO
                self.history.append(c["op"])
        return self.history


class Chaos:
    """One fault at a time: kill -9, SIGSTOP or isolate (SIGUSR1) a member, then undo it;
    dead members (killed or exited at a failpoint) are restarted after a while."""

    def __init__(self, cluster: Cluster, rng: random.Random, start: float) -> None:
        self.cluster, self.rng = cluster, rng
        self.counts = {"kill": 0, "stop": 0, "isolate": 0, "restart": 0}
        self.restart_at: dict[int, float] = {}
        self.undo: dict[int, tuple[float, int]] = {}  # member -> (when, SIGCONT or SIGUSR2)
        self.next_fault = start + 1.0

    def step(self, now: float, faulty: bool) -> None:
        cl, rng = self.cluster, self.rng
        for nid in IDS:
            if not cl.alive(nid) and nid not in self.restart_at:
                self.restart_at[nid] = now + (rng.uniform(0.2, 1.0) if faulty else 0.0)
        for nid, t in list(self.restart_at.items()):
            if now >= t:
                cl.start(nid)
                self.counts["restart"] += 1
                del self.restart_at[nid]
                self.undo.pop(nid, None)  # a new process starts running and connected
        for nid, (t, sig) in list(self.undo.items()):
            if now >= t or not faulty:
                cl.signal(nid, sig)
                del self.undo[nid]
        if faulty and now >= self.next_fault and not (self.restart_at or self.undo):
            nid, r = rng.choice(IDS), rng.random()
            if r < 0.4:
                cl.signal(nid, signal.SIGKILL)
                self.counts["kill"] += 1
            elif r < 0.7:
                cl.signal(nid, signal.SIGSTOP)
                self.undo[nid] = (now + rng.uniform(0.3, 1.2), signal.SIGCONT)
                self.counts["stop"] += 1
            else:
                cl.signal(nid, signal.SIGUSR1)
                self.undo[nid] = (now + rng.uniform(0.3, 1.5), signal.SIGUSR2)
                self.counts["isolate"] += 1
            self.next_fault = now + rng.uniform(0.5, 1.5)


def converged(statuses: dict[int, dict[str, Any]]) -> bool:
    return len(statuses) == len(IDS) and len({(s["applied"], s["hash"]) for s in statuses.values()}) == 1


def test_kill_pause_isolate_and_failpoints(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("RAFT_PROC_SEED", "1")))
    cluster = Cluster(tmp_path, failpoints="raft_after_persist=exit@0.003")
    ctx = zmq.Context()
    clients = Clients(ctx, cluster, 4, rng)
    try:
        for nid in IDS:
            cluster.start(nid)
        t0 = time.monotonic()
        chaos = Chaos(cluster, rng, t0)
        done, next_status = False, 0.0
        while not done and (now := time.monotonic()) < t0 + 20.0:
            faulty = now < t0 + 8.0
            clients.step(now, issue=faulty)
            chaos.step(now, faulty)
            if not faulty and all(c["op"] is None for c in clients.state) and now >= next_status:
                done = converged(clients.statuses)  # answers to the previous round
                clients.statuses = {}
                clients.status()
                next_status = now + 0.1
        history = clients.finish()
        ok = [o for o in history if o.status == OK]
        assert len(ok) >= 30, f"too little progress: {len(ok)} operations, faults {chaos.counts}"
        assert all(o.status == OK for o in history), "operations unanswered after healing"
        check_kv_history(history)
        assert done, "members did not reach the same applied index and state after healing"
    finally:
        cluster.close()
        for s in clients.socks.values():
            s.close(linger=0)
        ctx.term()
