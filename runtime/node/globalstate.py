"""This node's Raft member: the global state every node keeps a replica of (paper P1, G4).

The supervisor hosts it when the config has a ``[raft]`` section::

    [raft]
    id = 1                                             # this member's id in ``members`` or ``learners``
    members = { 1 = "tcp://127.0.0.1:7401", 2 = "tcp://127.0.0.1:7402", 3 = "tcp://127.0.0.1:7403" }
    learners = { 4 = "tcp://127.0.0.1:7404" }          # optional: receive the log, do not vote
    data_dir = "/var/lib/deft/node1-raft"              # term, vote and log, fsynced
    fsync = true
    tick_ms = 10                                       # election after 10 ticks, heartbeat every 2
    snapshot_every = 10000                             # applied entries between snapshots

A ``RaftDriver`` (``runtime/consensus/driver.py``) runs the pure core over
ZeroMQ with a ``DiskStorage``; ``members`` are the voters every node starts
with, ``learners`` members that get the log without voting (the Raft
dissertation's catch-up before a vote). Membership changes at run time go
one member at a time through the leader (``add_learner``, ``promote``,
``remove``: ``deft-ctl raft ...``); a new member's address is replicated
under ``_raft/addr/<id>`` so that every member (a future leader) reaches it.
The state machine is the replicated
``KVStateMachine`` (client sessions: a retried command is applied once).
Reads: ``get_local`` from this replica (may be stale), or ``read`` through
ReadIndex (linearizable). Writes: ``propose``, answered when applied. The
supervisor's poll loop is the driver's (its control socket is watched).

A node without ``[raft]`` whose NF uses global operations serves them from a
``LocalState`` (node-wide, not replicated) over the same channel. NF workers
reach it through ``WorkerChannel``: the supervisor binds a ROUTER
for its workers (``worker_endpoints``: ``ipc://<tmp>/deft.<node id>.globals``)
on which each worker's DEALER sends one batch entry (``batch_entry``, group
commit) per output batch and gets its results once this replica applied it;
and a PUB (``...globals.pub``) on which applied entries' changes
(``{key: value}``) go out, so each worker keeps a replica for stale-ok reads
(``ctx.globals.local``); while entries keep coming, their changes are merged
and sent at most every ``PUBLISH_EVERY_NS`` (5 ms). A member that is not the leader forwards the
proposal to the leader (``RaftCore.propose_or_forward``, MsgProp); if it is
lost there the worker retries with the same (client, seq), applied once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from deft.runtime.consensus import (Config, ConsensusError, Entry, EntryKind, NotLeader, NotReady, RaftCore,
                                    Snapshot)
from deft.runtime.consensus.driver import RaftDriver
from deft.runtime.consensus.kv import BadCommand, Command, KVStateMachine
from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.role import Role
from deft.runtime.consensus.storage import DiskStorage
from deft.runtime.config import RaftSection
from deft.runtime.sockets import make_socket, readable

Respond = Callable[[dict[str, Any]], None]
ADDR_PREFIX = "_raft/addr/"   # global key of a member added at run time: its endpoint


class GlobalState:
    def __init__(self, cfg: RaftSection, node_id: str, zctx: zmq.Context):
        self.cfg = cfg
        self.storage = DiskStorage(cfg.data_dir, fsync=cfg.fsync)
        self.core = RaftCore(Config(cfg.id, tuple(sorted(cfg.members)), tuple(sorted(cfg.learners)),
                                    election_tick=10, heartbeat_tick=2), self.storage, random.Random())
        snap = self.storage.snapshot
        self.kv = KVStateMachine.restore(snap.data) if snap else KVStateMachine()
        own = {**cfg.members, **cfg.learners}[cfg.id]
        self.driver = RaftDriver(self.core, self.storage, own, self._apply, self._restore,
                                 tick_seconds=cfg.tick_ms / 1000, ctx=zctx, on_read=self._on_read)
        #: every member's endpoint this node knows: config, then ``_raft/addr/<id>`` from the log
        self.addresses = {**cfg.members, **cfg.learners}
        self._learn_addresses(self.kv.data)
        self.driver.connect(self.addresses)
        # operator commands each get a client id of their own: many may be outstanding at once,
        # and a session allows one entry outstanding per client
        self._client = f"{node_id}/{os.getpid()}"
        self._ids = itertools.count(1)
        self._waiting: dict[str, list[Respond]] = {}
        self._reads: dict[bytes, tuple[Respond, str]] = {}
        #: workers' batch entries, by (client, seq): a retry replaces the responder
        self._batch_waiting: dict[tuple[str, int], Respond] = {}
        #: called with {key: value} of what each applied entry changed (the workers' PUB)
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        self.worker_counts: dict[str, int] = {}  # the WorkerChannel's counters, in status

    def maybe_compact(self) -> bool:
        """Every ``snapshot_every`` applied entries, snapshot the state machine and drop the log up to it.

        Without it the log grows for ever, on disk and in memory (``DiskStorage`` keeps its entries),
        and a restart replays all of it. Called between Readys (after ``run_once``); followers that
        need what was dropped get the snapshot (InstallSnapshot).
        """
        applied = self.core.log.applied
        base = self.core.snapshot.index if self.core.snapshot is not None else 0
        if applied - base < self.cfg.snapshot_every:
            return False
        self.storage.compact(self.core.compact(applied, self.kv.snapshot()))
        return True

    # -- the state machine side --------------------------------------------------------------
    def _apply(self, entry: Entry) -> None:
        if entry.kind is not EntryKind.NORMAL:
            return
        d = orjson.loads(entry.data)   # once: the state machine and the answers share it
        result = self.kv.apply_decoded(d, entry.index)
        if not isinstance(d, dict):  # a batch of commands (encode_batch): nobody here waits on those
            for c, r in zip(d, result):
                self._after_apply(Command.from_dict(c), r, entry.index)
            return
        self._after_apply(Command.from_dict(d), result, entry.index)

    def _after_apply(self, cmd: Command, result: Any, index: int) -> None:
        for respond in self._waiting.pop(cmd.client, []):
            respond({"result": result, "index": index})
        changes = {k: self.kv.data.get(k) for k in changed_keys(cmd)}
        if cmd.key.startswith(ADDR_PREFIX):
            self._learn_addresses(changes)
        batch = self._batch_waiting.pop((cmd.client, cmd.seq), None)
        if batch is not None:  # the changes too: the worker's replica must not depend on the PUB alone
            batch({"ok": True, "results": result, "index": index, "changes": changes})
        if self.on_change is not None:
            self.on_change(changes)

    def _learn_addresses(self, data: dict[str, Any]) -> None:
        """Connect to members added at run time (their endpoints are in the replicated state)."""
        found = {}
        for key, endpoint in data.items():
            tail = key[len(ADDR_PREFIX):] if key.startswith(ADDR_PREFIX) else ""
            if tail.isdigit() and isinstance(endpoint, str) and endpoint.startswith(("tcp://", "ipc://")):
                found[int(tail)] = endpoint
        new = {k: v for k, v in found.items() if k not in self.addresses}
        if new:
            self.addresses.update(new)
            if hasattr(self, "driver"):
                self.driver.connect(new)

    def _restore(self, snap: Snapshot) -> None:
        self.kv = KVStateMachine.restore(snap.data)
        self._learn_addresses(self.kv.data)
        if self.on_change is not None:
            self.on_change(dict(self.kv.data))

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

    def propose_entry(self, client: str, seq: int, entry: bytes, respond: Respond) -> None:
        """A worker's batch entry (``batch_entry(client, seq, ops)``): ``respond`` gets the results when
        this replica applies it, or a refusal now (no leader known). On a follower it is forwarded."""
        key = (client, seq)
        self._batch_waiting[key] = respond
        try:
            self.driver.propose_or_forward(entry)
        except (NotLeader, NotReady) as exc:
            self._batch_waiting.pop(key, None)
            respond(self._refusal(exc))

    # -- membership (one member at a time, through the leader) ------------------------------------
    def add_learner(self, member: int, endpoint: str, respond: Respond) -> None:
        """Add ``member`` (at ``endpoint``) as a learner: it gets the log, it does not vote yet."""
        if member in self.core.membership.members:
            raise ValueError(f"{member} is a member already ({self.core.membership.describe()})")
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise ValueError(f"expected tcp://HOST:PORT, got {endpoint!r}")
        m = self.core.membership
        self._change(Membership.of(m.voters, (*m.learners, member)), respond,
                     before=lambda: self._announce(member, endpoint))

    def promote(self, member: int, respond: Respond) -> None:
        """Make learner ``member`` a voter, once it has caught up with the commit index."""
        m = self.core.membership
        if member not in m.learners:
            raise ValueError(f"{member} is not a learner ({m.describe()})")
        pr = self.core.prs.get(member)
        if self.core.role is Role.LEADER and (pr is None or pr.match < self.core.log.committed):
            raise ValueError(f"learner {member} has not caught up yet (has {pr.match if pr else 0} of "
                             f"{self.core.log.committed}); try again")
        self._change(Membership.of((*m.voters, member), set(m.learners) - {member}), respond)

    def remove(self, member: int, respond: Respond) -> None:
        m = self.core.membership
        if member not in m.members:
            raise ValueError(f"{member} is not a member ({m.describe()})")
        if member == self.cfg.id:
            raise ValueError("the leader cannot remove itself: transfer leadership first (raft_transfer)")
        self._change(Membership.of(set(m.voters) - {member}, set(m.learners) - {member}), respond)

    def _announce(self, member: int, endpoint: str) -> None:
        """Connect here now and replicate the endpoint (a later leader must reach the member too)."""
        self.addresses[member] = endpoint
        self.driver.connect({member: endpoint})
        self.propose("put", f"{ADDR_PREFIX}{member}", (endpoint,), lambda _reply: None)

    def _change(self, new: Membership, respond: Respond, before: Callable[[], None] | None = None) -> None:
        try:
            if self.core.role is not Role.LEADER:
                raise NotLeader(self.cfg.id, self.core.lead)
            if before is not None:
                before()
            index = self.core.propose_conf_change(new)
        except NotLeader as exc:
            respond(self._refusal(exc))
            return
        except ConsensusError as exc:
            raise ValueError(str(exc)) from None
        respond({"ok": True, "index": index, "membership": {"voters": list(new.voters),
                                                          "learners": list(new.learners)}})

    def _refusal(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, NotLeader):
            hint = exc.leader_hint
            return {"ok": False, "error": f"not the leader; try member {hint} at {self.addresses.get(hint)}",
                    "leader": hint}
        return {"ok": False, "error": "no leader yet; try again"}

    def status(self) -> dict[str, Any]:
        core = self.core
        return {"id": self.cfg.id, "role": core.role.value, "term": core.term, "leader": core.lead,
                "commit": core.log.committed, "applied": core.log.applied,
                "snapshot": core.snapshot.index if core.snapshot is not None else 0,
                "members": {str(k): v for k, v in sorted(self.addresses.items())},
                "voters": list(core.membership.voters), "learners": list(core.membership.learners),
                "progress": ({str(p): pr.match for p, pr in sorted(core.prs.items())}
                             if core.role is Role.LEADER else {}),
                "digest": hashlib.sha256(self.kv.snapshot()).hexdigest()[:16],
                "dropped": dict(self.driver.dropped), "workers": dict(self.worker_counts)}

    def close(self) -> None:
        self.driver.close()
        self.storage.close()


class LocalState:
    """A node's global state without Raft (no ``[raft]``, an NF that uses globals).

    One in-process ``KVStateMachine`` in the supervisor, shared by the node's
    workers through the same ``WorkerChannel``: an entry is applied when it
    arrives and answered at once. Node-wide (the instances of the node share
    the counts), not replicated: another node has its own.
    """

    def __init__(self) -> None:
        self.kv = KVStateMachine()
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        self.worker_counts: dict[str, int] = {}

    def propose_entry(self, client: str, seq: int, entry: bytes, respond: Respond) -> None:
        result = self.kv.apply(entry)
        changes = {k: self.kv.data.get(k) for k in changed_keys(Command.decode(entry))}
        respond({"ok": True, "results": result, "changes": changes})
        if self.on_change is not None:
            self.on_change(changes)


def changed_keys(cmd: Command) -> set[str]:
    """The data keys an applied command may have changed (none for a fence: it closes sessions)."""
    if cmd.op == "multi":
        return {item[1] for item in cmd.args[0]}
    return set() if cmd.op == "fence" else {cmd.key}


# -- the workers' channel ------------------------------------------------------------------------------
MAGIC = b"g1"


#: The workers' replicas hear of applied entries at most this often while entries keep coming (each
#: message wakes the PUB's I/O thread and every worker's): a 3-node cluster at 1 kpps with one update
#: per NF call applied about 700 entries a second, each published by every node to each of its workers.
PUBLISH_EVERY_NS = 5_000_000


def worker_endpoints(node_id: str) -> tuple[str, str]:
    """(requests ROUTER, changes PUB) endpoints of a node's supervisor for its workers (ipc, per node id)."""
    base = os.path.join(tempfile.gettempdir(), f"deft.{node_id}.globals")
    return f"ipc://{base}", f"ipc://{base}.pub"


class WorkerChannel:
    """The supervisor's side of the workers' global operations.

    Requests (DEALER -> ROUTER), every frame bytes:
      ``[b"g1", req_id, b"B", client, seq, entry]``  propose a batch entry (``batch_entry``) or a
                                                     take-over's fence (``fence_entry``)
      ``[b"g1", req_id, b"D"]``                      the whole applied state (a worker starting)
    Replies ``[b"g1", req_id, json]``: ``{"ok": true, "results": ...}`` when applied here,
    ``{"ok": true, "data": {...}}``, or ``{"ok": false, "error": ..., "retry": true}`` (no
    leader known: the worker retries later). Anything else is counted (``bad_frames``) and
    ignored. Every applied entry's changes go out on the PUB as one JSON frame ``{key: value}``.
    """

    def __init__(self, gs: GlobalState | LocalState, zctx: zmq.Context, node_id: str):
        import orjson

        self._dumps = orjson.dumps
        self.gs = gs
        self.endpoints = worker_endpoints(node_id)
        for ep in self.endpoints:  # a predecessor that was killed leaves its socket files
            try:
                os.unlink(ep[len("ipc://"):])
            except FileNotFoundError:
                pass
        self.sock = make_socket(zctx, zmq.ROUTER, bind=self.endpoints[0])
        self.pub = make_socket(zctx, zmq.PUB, bind=self.endpoints[1], hwm=100_000)
        self.counts = {"requests": 0, "bad_frames": 0, "refused": 0, "published": 0}
        self._unpublished: dict[str, Any] = {}
        self._next_publish = 0
        gs.on_change = self.publish
        gs.worker_counts = self.counts

    def publish(self, changes: dict[str, Any]) -> None:
        """An applied entry's changes, for the workers' replicas: at once after a quiet spell, else
        merged with the next ones and sent when PUBLISH_EVERY_NS has passed (``flush``; the loop
        calls it and wakes for it: ``flush_due_ms``)."""
        self._unpublished.update(changes)   # values, not deltas: the newest of a key is the one to send
        self.flush()

    def flush(self) -> None:
        if not self._unpublished:
            return
        now = time.monotonic_ns()
        if now < self._next_publish:
            return
        try:
            self.pub.send(self._dumps(self._unpublished), zmq.NOBLOCK)
            self.counts["published"] += 1
        except zmq.Again:
            pass
        self._unpublished = {}
        self._next_publish = now + PUBLISH_EVERY_NS

    def flush_due_ms(self) -> float | None:
        """Milliseconds until merged changes are due (None: nothing waits)."""
        if not self._unpublished:
            return None
        return max(0.0, (self._next_publish - time.monotonic_ns()) / 1e6)

    def handle_all(self) -> None:
        while readable(self.sock):   # asked, not a zmq.Again raised: cheaper, and it leaves the socket
            self.handle(self.sock.recv_multipart(zmq.NOBLOCK))   # known empty (waitset.py)

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) < 4 or frames[1] != MAGIC:
            self.counts["bad_frames"] += 1
            return
        ident, req_id, kind = frames[0], frames[2], frames[3]

        def respond(reply: dict[str, Any]) -> None:
            if not reply.get("ok", True):
                reply = {**reply, "retry": True}
                self.counts["refused"] += 1
            try:
                self.sock.send_multipart([ident, MAGIC, req_id, self._dumps(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

        if kind == b"D" and len(frames) == 4:
            respond({"ok": True, "data": self.gs.kv.data})
            return
        if kind != b"B" or len(frames) != 7:
            self.counts["bad_frames"] += 1
            return
        try:
            client, seq, entry = frames[4].decode(), int(frames[5]), frames[6]
            cmd = Command.decode(entry)
            if (cmd.client, cmd.seq) != (client, seq) or cmd.op not in ("multi", "fence"):
                raise BadCommand("entry does not match its envelope")
            cmd.as_dict()  # checks every op of the multi: a malformed one must never reach the log
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self.counts["bad_frames"] += 1
            return
        self.counts["requests"] += 1
        self.gs.propose_entry(client, seq, entry, respond)

    def close(self) -> None:
        self.gs.on_change = None
        self.sock.close(0)
        self.pub.close(0)
        for ep in self.endpoints:
            try:
                os.unlink(ep[len("ipc://"):])
            except FileNotFoundError:
                pass
