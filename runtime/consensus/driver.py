"""RaftDriver: runs a RaftCore over ZeroMQ with a real clock and durable storage.

The only consensus module that imports zmq. Transport: each node binds one
ROUTER for incoming messages and connects one DEALER per peer for outgoing
ones (identity = its node id), so every message is one-way and needs no reply
socket. Sends never block: a message to an unreachable or slow peer is
dropped (``IMMEDIATE`` + ``NOBLOCK``), which Raft tolerates by retrying.

Loop (``run_once``): poll the ROUTER (and any sockets added with ``watch``)
up to the next tick, ``step`` each decoded message, ``tick`` when due, then
drain Readys in the contract's order: persist (storage.save), send, apply
(callback), advance; confirmed ReadIndex reads are handed to ``on_read`` once
the state machine has applied their index. Failpoints (``failpoints.py``)
sit before persisting and between persisting and sending.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import zmq

from deft.runtime.consensus import codec
from deft.runtime.consensus.core import RaftCore
from deft.runtime.consensus.failpoints import failpoint
from deft.runtime.consensus.messages import Entry, Message, Snapshot
from deft.runtime.consensus.ready import ReadState
from deft.runtime.consensus.storage_api import Storage
from deft.runtime.errors import WireError


class RaftDriver:
    def __init__(self, core: RaftCore, storage: Storage, bind: str,
                 apply: Callable[[Entry], None], restore: Callable[[Snapshot], None],
                 tick_seconds: float = 0.1, ctx: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_read: Callable[[bytes], None] | None = None,
                 net_filter: Callable[[Message], bool] | None = None) -> None:
        """``net_filter(msg) -> False`` drops a message in either direction (fault tests)."""
        self.core, self.storage = core, storage
        self.apply, self.restore, self.on_read = apply, restore, on_read
        self.net_filter = net_filter
        self._confirmed: list[ReadState] = []
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.ctx = ctx or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.bind(bind)
        #: the bound address (with the real port when bind used ``:*``)
        self.endpoint: str = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.dealers: dict[int, zmq.Socket] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self._watched: dict[zmq.Socket, Callable[[], None]] = {}
        #: set while run_once runs the watched handlers: propose/read_index leave the
        #: drain to the end of run_once, so everything proposed in one wake-up shares
        #: one Ready (one storage write, one append per follower): group commit
        self._defer_drain = False
        self.next_tick = clock() + tick_seconds
        self.dropped = {"bad_frames": 0, "send_full": 0}

    def connect(self, peers: dict[int, str]) -> None:
        """Open a DEALER to every other member: ``{node id: endpoint}``."""
        for nid, endpoint in peers.items():
            if nid == self.core.id or nid in self.dealers:
                continue
            s = self.ctx.socket(zmq.DEALER)
            s.linger = 0
            s.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for peers that are not connected
            s.sndhwm = 1000
            s.identity = str(self.core.id).encode()
            s.connect(endpoint)
            self.dealers[nid] = s

    def watch(self, sock: zmq.Socket, handler: Callable[[], None]) -> None:
        """Also poll ``sock`` in ``run_once`` and call ``handler`` when it is readable."""
        self.poller.register(sock, zmq.POLLIN)
        self._watched[sock] = handler

    def propose(self, data: bytes) -> int:
        """Propose on this node; raises NotLeader (with a hint) elsewhere.

        Called from a ``watch`` handler, the entry is persisted and sent when that
        ``run_once`` drains, with whatever else was proposed in the same wake-up;
        called from outside ``run_once``, at once.
        """
        index = self.core.propose(data)
        if not self._defer_drain:
            self._drain()
        return index

    def propose_or_forward(self, data: bytes) -> int | None:
        """``propose`` on the leader; on a follower, forward to the leader (``RaftCore.propose_or_forward``)."""
        index = self.core.propose_or_forward(data)
        if not self._defer_drain:
            self._drain()
        return index

    def run_once(self, max_wait: float | None = None) -> None:
        """Handle what arrives until the next tick (or ``max_wait`` seconds), then tick if due."""
        now = self.clock()
        wait = max(0.0, self.next_tick - now)
        if max_wait is not None:
            wait = min(wait, max_wait)
        events = dict(self.poller.poll(math.ceil(wait * 1000)))  # rounded down, it would spin the last ms
        self._defer_drain = True
        try:
            for sock, handler in self._watched.items():
                if sock in events:
                    handler()
        finally:
            self._defer_drain = False
        if self.router in events:
            while True:
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_frames(frames[1:])  # frames[0] is the sender's identity
        now = self.clock()
        if now >= self.next_tick:
            # One tick per call; after a long stall, do not burst the missed ones.
            self.next_tick = max(self.next_tick + self.tick_seconds, now)
            self.core.tick()
        self._drain()

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            m = codec.decode(frames)
        except WireError:
            self.dropped["bad_frames"] += 1
            return
        if m.dst == self.core.id and (self.net_filter is None or self.net_filter(m)):
            self.core.step(m)

    def read_index(self, context: bytes) -> None:
        """Start a ReadIndex read; ``on_read(context)`` is called when it may be served."""
        self.core.read_index(context)
        if not self._defer_drain:
            self._drain()

    def _drain(self) -> None:
        while (rd := self.core.ready()) is not None:
            failpoint("raft_before_persist")
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # durable first
            failpoint("raft_after_persist")
            for m in rd.messages:
                sock = self.dealers.get(m.dst)
                if sock is None or (self.net_filter is not None and not self.net_filter(m)):
                    continue
                try:
                    sock.send_multipart(codec.encode(m), zmq.NOBLOCK)
                except zmq.Again:
                    self.dropped["send_full"] += 1
            if rd.snapshot is not None:
                self.restore(rd.snapshot)
            for e in rd.committed:
                self.apply(e)
            self._confirmed += rd.read_states
            self.core.advance(rd)
            self._serve_reads()

    def _serve_reads(self) -> None:
        applied = self.core.log.applied
        while self._confirmed and self._confirmed[0].index <= applied:
            rs = self._confirmed.pop(0)
            if self.on_read is not None:
                self.on_read(rs.context)

    def close(self) -> None:
        for s in self.dealers.values():
            s.close(linger=0)
        self.router.close(linger=0)
