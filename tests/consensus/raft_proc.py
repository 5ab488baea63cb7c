"""One Raft member as a real process, for the real-process fault tests.

    python -m tests.consensus.raft_proc --id 1 --dir D --raft tcp://127.0.0.1:P1 \\
        --client tcp://127.0.0.1:C1 --peers 1=tcp://127.0.0.1:P1,2=...

RaftDriver (ZeroMQ) + DiskStorage (fsync on) + KVStateMachine. Clients talk
to a ROUTER on --client with orjson requests ``{"id", "op", ...}``:
  {"op": "cmd", "client", "seq", "kind", "key", "args"}  -> answered when applied
  {"op": "read", "key"}                                  -> answered by ReadIndex
  {"op": "status"}                                       -> role, term, applied, state hash
Errors come back as {"id", "err": "not_leader", "hint"} or {"err": "not_ready"}.
Armed failpoints (DEFT_RAFT_FAILPOINTS) may kill the process at any time.
SIGUSR1 cuts the member off the Raft network (every message in or out is
dropped) until SIGUSR2: a full partition of this member, without a proxy.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
from typing import Any

import orjson
import zmq

from deft.runtime.consensus import (Config, Entry, EntryKind, NotLeader, NotReady, RaftCore,
                                    Snapshot)
from deft.runtime.consensus.driver import RaftDriver
from deft.runtime.consensus.kv import Command, KVStateMachine
from deft.runtime.consensus.storage import DiskStorage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--raft", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--tick", type=float, default=0.01)
    a = ap.parse_args(argv)
    peers = {int(k): v for k, v in (p.split("=", 1) for p in a.peers.split(","))}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    isolated = [False]
    signal.signal(signal.SIGUSR1, lambda *_: isolated.__setitem__(0, True))
    signal.signal(signal.SIGUSR2, lambda *_: isolated.__setitem__(0, False))

    storage = DiskStorage(a.dir)
    core = RaftCore(Config(a.id, tuple(sorted(peers)), election_tick=10, heartbeat_tick=2),
                    storage, random.Random())
    snap = storage.snapshot
    state = {"kv": KVStateMachine.restore(snap.data) if snap else KVStateMachine()}
    waiting: dict[tuple[str, int], list[tuple[bytes, Any]]] = {}
    reads: dict[bytes, tuple[bytes, Any, str]] = {}
    ctx = zmq.Context()
    clients = ctx.socket(zmq.ROUTER)
    clients.linger = 0
    clients.bind(a.client)

    def reply(ident: bytes, body: dict[str, Any]) -> None:
        clients.send_multipart([ident, orjson.dumps(body)])

    def apply(e: Entry) -> None:
        if e.kind is not EntryKind.NORMAL:
            return
        result = state["kv"].apply(e.data)
        cmd = Command.decode(e.data)
        for ident, rid in waiting.pop((cmd.client, cmd.seq), []):
            reply(ident, {"id": rid, "result": result})

    def restore(s: Snapshot) -> None:
        state["kv"] = KVStateMachine.restore(s.data)

    def on_read(context: bytes) -> None:
        ident, rid, key = reads.pop(context)
        reply(ident, {"id": rid, "result": state["kv"].data.get(key)})

    driver = RaftDriver(core, storage, a.raft, apply, restore, tick_seconds=a.tick, ctx=ctx,
                        on_read=on_read, net_filter=lambda m: not isolated[0])
    driver.connect(peers)

    def on_client() -> None:
        while True:
            try:
                ident, raw = clients.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            req = orjson.loads(raw)
            rid = req["id"]
            try:
                if req["op"] == "status":
                    reply(ident, {"id": rid, "role": core.role.value, "term": core.term,
                                  "applied": core.log.applied, "leader": core.lead,
                                  "hash": hashlib.sha256(state["kv"].snapshot()).hexdigest()})
                elif req["op"] == "read":
                    context = f"{rid}".encode()
                    reads[context] = (ident, rid, req["key"])
                    try:
                        driver.read_index(context)
                    except Exception:
                        reads.pop(context, None)
                        raise
                else:
                    cmd = Command(req["client"], req["seq"], req["kind"], req["key"],
                                  tuple(req["args"]))
                    waiting.setdefault((cmd.client, cmd.seq), []).append((ident, rid))
                    try:
                        driver.propose(cmd.encode())
                    except Exception:
                        waiting.pop((cmd.client, cmd.seq), None)
                        raise
            except NotLeader as e:
                reply(ident, {"id": rid, "err": "not_leader", "hint": e.leader_hint})
            except NotReady:
                reply(ident, {"id": rid, "err": "not_ready"})

    driver.watch(clients, on_client)
    try:
        while True:
            driver.run_once()
    finally:
        driver.close()
        clients.close(linger=0)
        storage.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
