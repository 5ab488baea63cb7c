"""One member of a 3-member benchmark cluster, DEFT Raft or PySyncObj, as its own OS process.

    python benchmarks/raft_member.py --impl deft|pysyncobj --id 1 --dir D \\
        --raft 1=tcp://127.0.0.1:P1,2=...,3=... --client tcp://127.0.0.1:C [--fsync]

Started (and stopped by PID) by ``benchmarks/raft_vs_pysyncobj.py``. Both kinds
answer the same client protocol on a ZMQ ROUTER bound to ``--client`` (orjson
request -> orjson reply, matched by ``id``), so both pay the same client overhead:

  {"id", "op": "incr", "client", "seq"} -> {"id", "result"} once the increment is
                                           committed and applied on this member
  {"op": "status"}                      -> {"id", "leader": bool, "applied", "ready"}

Errors: {"id", "err": "not_leader"} (neither side forwards; the client drives the leader).

* deft: RaftCore + DiskStorage(fsync=--fsync) + RaftDriver (ZeroMQ, tick 10 ms,
  election 10-20 ticks, heartbeat every 2 ticks, as ``runtime/node/globalstate.py``) +
  KVStateMachine; an ``incr`` is ``Command(client, seq, "incr", "bench", (1,))``.
  One thread: the client socket is watched by the driver's poll loop.
* pysyncobj: a SyncObj with one ``@replicated`` counter, journalFile + fullDumpFile in
  ``--dir``, appendEntriesPeriod 10 ms, election timeout 100-200 ms (the same timing as
  ours), appendEntriesUseBatch=False (each command is sent at once instead of at the next
  appendEntriesPeriod; the pipe notifier wakes the loop). One thread too: autoTick=False
  and this loop calls ``doTick``; the client socket's FD is registered in PySyncObj's
  poller, and an on-tick callback (run right before its poll) drains the socket.
  PySyncObj has no fsync setting: it never fsyncs (see raft_vs_pysyncobj.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from typing import Any

import orjson
import zmq


def parse_members(spec: str) -> dict[int, str]:
    return {int(k): v for k, v in (p.split("=", 1) for p in spec.split(","))}


def run_deft(a: argparse.Namespace, members: dict[int, str], clients: zmq.Socket, ctx: zmq.Context) -> None:
    from deft.runtime.consensus import Config, Entry, EntryKind, NotLeader, NotReady, RaftCore, Snapshot
    from deft.runtime.consensus.driver import RaftDriver
    from deft.runtime.consensus.kv import Command, KVStateMachine
    from deft.runtime.consensus.role import Role
    from deft.runtime.consensus.storage import DiskStorage

    storage = DiskStorage(a.dir, fsync=a.fsync)
    core = RaftCore(Config(a.id, tuple(sorted(members)), election_tick=10, heartbeat_tick=2),
                    storage, random.Random())
    kv = [KVStateMachine()]
    waiting: dict[tuple[str, int], tuple[bytes, Any]] = {}

    def reply(ident: bytes, body: dict[str, Any]) -> None:
        clients.send_multipart([ident, orjson.dumps(body)])

    def apply(e: Entry) -> None:
        if e.kind is not EntryKind.NORMAL:
            return
        result = kv[0].apply(e.data)
        cmd = Command.decode(e.data)
        w = waiting.pop((cmd.client, cmd.seq), None)
        if w is not None:
            reply(w[0], {"id": w[1], "result": result})

    def restore(s: Snapshot) -> None:
        kv[0] = KVStateMachine.restore(s.data)

    driver = RaftDriver(core, storage, members[a.id], apply, restore, tick_seconds=0.01, ctx=ctx)
    driver.connect(members)

    def on_client() -> None:
        while True:
            try:
                ident, raw = clients.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            req = orjson.loads(raw)
            rid = req["id"]
            if req["op"] == "status":
                reply(ident, {"id": rid, "leader": core.role is Role.LEADER, "applied": core.log.applied,
                              "ready": core.role is Role.LEADER and core.log.applied >= core.log.last_index()})
                continue
            key = (req["client"], req["seq"])
            waiting[key] = (ident, rid)
            try:
                driver.propose(Command(req["client"], req["seq"], "incr", "bench", (1,)).encode())
            except (NotLeader, NotReady):
                waiting.pop(key, None)
                reply(ident, {"id": rid, "err": "not_leader"})

    driver.watch(clients, on_client)
    try:
        while True:
            driver.run_once()
    finally:
        driver.close()
        storage.close()


def run_pysyncobj(a: argparse.Namespace, members: dict[int, str], clients: zmq.Socket) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
    from pysyncobj.poller import POLL_EVENT_TYPE

    def hostport(endpoint: str) -> str:
        return endpoint.removeprefix("tcp://")

    class Counter(SyncObj):
        def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
            super().__init__(self_addr, partners, conf)
            self.value = 0

        @replicated
        def incr(self, n: int) -> int:
            self.value += n
            return self.value

    conf = SyncObjConf(autoTick=False, journalFile=os.path.join(a.dir, "journal"),
                       fullDumpFile=os.path.join(a.dir, "dump"),
                       appendEntriesPeriod=0.01, raftMinTimeout=0.1, raftMaxTimeout=0.2,
                       connectionTimeout=3.5, connectionRetryTime=0.1, appendEntriesUseBatch=False,
                       commandsWaitLeader=False)
    obj = Counter(hostport(members[a.id]), [hostport(v) for k, v in sorted(members.items()) if k != a.id], conf)

    def reply(ident: bytes, body: dict[str, Any]) -> None:
        clients.send_multipart([ident, orjson.dumps(body)])

    def on_client(*_: object) -> None:
        while True:
            try:
                ident, raw = clients.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            req = orjson.loads(raw)
            rid = req["id"]
            if req["op"] == "status":
                st = obj.getStatus()
                leader = obj._isLeader()
                reply(ident, {"id": rid, "leader": leader, "applied": st["last_applied"],
                              "ready": leader and obj.isReady() and st["last_applied"] >= st["commit_idx"]})
                continue
            if not obj._isLeader():
                reply(ident, {"id": rid, "err": "not_leader"})
                continue

            def done(result: Any, err: int, ident: bytes = ident, rid: Any = rid) -> None:
                if err == FAIL_REASON.SUCCESS:
                    reply(ident, {"id": rid, "result": result})
                else:
                    reply(ident, {"id": rid, "err": "not_leader" if err in (
                        FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER, FAIL_REASON.LEADER_CHANGED,
                        FAIL_REASON.DISCARDED) else f"failed {err}"})

            obj.incr(1, callback=done)

    # The ZMQ FD only signals edges: the on-tick callback runs right before PySyncObj's poll
    # (after any replies were sent), drains the socket, and so re-arms the FD before blocking.
    obj._poller.subscribe(clients.getsockopt(zmq.FD), on_client, POLL_EVENT_TYPE.READ)
    obj.addOnTickCallback(on_client)
    try:
        while True:
            obj.doTick(0.01)
    finally:
        obj.destroy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("deft", "pysyncobj"), required=True)
    ap.add_argument("--id", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--raft", required=True, help="1=tcp://127.0.0.1:P1,2=...,3=...")
    ap.add_argument("--client", required=True)
    ap.add_argument("--fsync", action="store_true", help="deft only: DiskStorage(fsync=True)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    members = parse_members(a.raft)
    os.makedirs(a.dir, exist_ok=True)
    ctx = zmq.Context()
    clients = ctx.socket(zmq.ROUTER)
    clients.linger = 0
    clients.bind(a.client)
    try:
        if a.impl == "deft":
            run_deft(a, members, clients, ctx)
        else:
            run_pysyncobj(a, members, clients)
    finally:
        clients.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
