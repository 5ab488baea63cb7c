"""This node's Raft member: the global state every node keeps a replica of (paper P1, G4).

The supervisor hosts it when the config has a ``[raft]`` section::

    [raft]
    id = 1                                             # this member's id in ``members``
    members = { 1 = "tcp://127.0.0.1:7401", 2 = "tcp://127.0.0.1:7402", 3 = "tcp://127.0.0.1:7403" }
    data_dir = "/var/lib/deft/node1-raft"              # term, vote and log, fsynced
    fsync = true
    tick_ms = 10                                       # election after 10 ticks, heartbeat every 2

A ``RaftDriver`` (``runtime/consensus/driver.py``) runs the pure core over
ZeroMQ with a ``DiskStorage``; the state machine is the replicated
``KVStateMachine`` (client sessions: a retried command is applied once).
Reads: ``get_local`` from this replica (may be stale), or ``read`` through
ReadIndex (linearizable). Writes: ``propose``, answered when applied. The
supervisor's poll loop is the driver's (its control socket is watched).

Not yet: NF workers' global operations (issue 4: the NF context's incr /
add_to_set / compare_and_set, group commit per batch, release after commit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
from collections.abc import Callable
from typing import Any

import zmq

from deft.runtime.consensus import Config, Entry, EntryKind, NotLeader, NotReady, RaftCore, Snapshot
from deft.runtime.consensus.driver import RaftDriver
from deft.runtime.consensus.kv import Command, KVStateMachine
from deft.runtime.consensus.storage import DiskStorage

Respond = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class RaftSection:
    id: int
    members: dict[int, str]
    data_dir: str
    fsync: bool
    tick_ms: int


class GlobalState:
    def __init__(self, cfg: RaftSection, node_id: str, zctx: zmq.Context):
        self.cfg = cfg
        self.storage = DiskStorage(cfg.data_dir, fsync=cfg.fsync)
        self.core = RaftCore(Config(cfg.id, tuple(sorted(cfg.members)), election_tick=10, heartbeat_tick=2),
                             self.storage, random.Random())
        snap = self.storage.snapshot
        self.kv = KVStateMachine.restore(snap.data) if snap else KVStateMachine()
        self.driver = RaftDriver(self.core, self.storage, cfg.members[cfg.id], self._apply, self._restore,
                                 tick_seconds=cfg.tick_ms / 1000, ctx=zctx, on_read=self._on_read)
        self.driver.connect(dict(cfg.members))
        # operator commands each get a client id of their own: many may be outstanding at once,
        # and a session allows one entry outstanding per client
        self._client = f"{node_id}/{os.getpid()}"
        self._ids = itertools.count(1)
        self._waiting: dict[str, list[Respond]] = {}
        self._reads: dict[bytes, tuple[Respond, str]] = {}

    # -- the state machine side --------------------------------------------------------------
    def _apply(self, entry: Entry) -> None:
        if entry.kind is not EntryKind.NORMAL:
            return
        result = self.kv.apply(entry.data)
        cmd = Command.decode(entry.data)
        for respond in self._waiting.pop(cmd.client, []):
            respond({"result": result, "index": entry.index})

    def _restore(self, snap: Snapshot) -> None:
        self.kv = KVStateMachine.restore(snap.data)

    def _on_read(self, context: bytes) -> None:
        respond, key = self._reads.pop(context)
        respond({"key": key, "value": self.kv.data.get(key), "linearizable": True})

    # -- requests ---------------------------------------------------------------------------------
    def get_local(self, key: str) -> dict[str, Any]:
        return {"key": key, "value": self.kv.data.get(key), "linearizable": False}

    def read(self, key: str, respond: Respond) -> None:
        """Linearizable read through ReadIndex; ``respond`` is called once the index is applied."""
        context = f"r{next(self._ids)}".encode()
        self._reads[context] = (respond, key)
        try:
            self.driver.read_index(context)
        except (NotLeader, NotReady) as exc:
            self._reads.pop(context, None)
            respond(self._refusal(exc))

    def propose(self, op: str, key: str, args: tuple, respond: Respond) -> None:
        """Propose a command; ``respond`` gets its result when applied, or the refusal now."""
        client = f"{self._client}/{next(self._ids)}"
        cmd = Command(client, 1, op, key, tuple(args))
        data = cmd.encode()  # BadCommand (a ValueError) for an unknown op, before anything is waiting
        self._waiting.setdefault(client, []).append(respond)
        try:
            self.driver.propose(data)
        except (NotLeader, NotReady) as exc:
            self._waiting.pop(client, None)
            respond(self._refusal(exc))

    def _refusal(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, NotLeader):
            hint = exc.leader_hint
            return {"ok": False, "error": f"not the leader; try member {hint} at {self.cfg.members.get(hint)}",
                    "leader": hint}
        return {"ok": False, "error": "no leader yet; try again"}

    def status(self) -> dict[str, Any]:
        core = self.core
        return {"id": self.cfg.id, "role": core.role.value, "term": core.term, "leader": core.lead,
                "commit": core.log.committed, "applied": core.log.applied,
                "members": {str(k): v for k, v in sorted(self.cfg.members.items())},
                "digest": hashlib.sha256(self.kv.snapshot()).hexdigest()[:16],
                "dropped": dict(self.driver.dropped)}

    def close(self) -> None:
        self.driver.close()
        self.storage.close()
