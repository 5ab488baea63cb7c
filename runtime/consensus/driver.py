"""RaftDriver: runs a RaftCore over ZeroMQ with a real clock and durable storage.

The only consensus module that imports zmq. Transport: each node binds one
ROUTER for incoming messages and connects one DEALER per peer for outgoing
ones (identity = its node id), so every message is one-way and needs no reply
socket. Sends never block: a message to an unreachable or slow peer is
dropped (``IMMEDIATE`` + ``NOBLOCK``), which Raft tolerates by retrying.

Loop (``run_once``): poll the ROUTER (and any sockets added with ``watch``)
up to the next tick, ``step`` each decoded message, ``tick`` when due, and
drain Readys: persist (storage.save), send and apply (a leader applies first,
a follower sends first), advance; confirmed ReadIndex reads are handed to
``on_read`` once the state machine has applied their index. Failpoints
(``failpoints.py``) sit before persisting and right after it (before anything
is applied; before anything is sent, except the appends of a leader, see below).

For the latency of one operation (client -> leader -> followers -> leader ->
client) the loop drains early, not only once at the end of an iteration: right
after the watched handlers (their proposals go out before the peers' backlog,
e.g. acks of earlier appends, is read) and right after any message that moved
the commit index (the entry is applied and its client answered before the rest
of the backlog is read). An append without entries, which only tells a follower
a new commit index, is held up to ``coalesce_seconds`` (1 ms): the next
proposal's append carries that commit too and replaces it, so a stream of
single operations costs one append and one ack per follower each, not two;
when nothing follows, the held append goes out on time. Not held: appends to a
follower whose forwarded proposals (MsgProp) it has not yet been told are
committed (its clients wait for it to apply them). Holding or dropping
such a message is safe: Raft tolerates delayed and lost messages (and an empty
append carries no entry anyone waits for).

Two disk writes are kept off that path (``lazy_commit``, ``leader_sends_first``,
both on by default). A Ready that only moves the commit index is not written:
commit is volatile state in Raft (a restarted member learns it again from the
leader), so it rides along with the next write of entries (one fsync for both)
and ``close`` writes what is left (a member that crashed applies up to the
commit it finds, the rest when the leader tells it again). And a leader sends the appends of a Ready
with new entries before its own write of them (Raft dissertation §10.2.1): it
counts itself towards a commit only when it steps an ack, after that write
returned, so its write and the followers' overlap. Not when the Ready changes
term or vote, or holds a snapshot: those are written before anything is sent.

Wire format: one binary frame per message (``codec.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import zmq

from deft.runtime.consensus import codec
from deft.runtime.consensus.core import RaftCore
from deft.runtime.consensus.failpoints import failpoint
from deft.runtime.consensus.messages import Entry, Message, MsgType, Snapshot
from deft.runtime.consensus.ready import Ready, ReadState
from deft.runtime.consensus.role import Role
from deft.runtime.consensus.storage_api import Storage
from deft.runtime.errors import WireError
from deft.runtime.sockets import make_socket, readable
from deft.runtime.waitset import WaitSet


class RaftDriver:
    def __init__(self, core: RaftCore, storage: Storage, bind: str,
                 apply: Callable[[Entry], None], restore: Callable[[Snapshot], None],
                 tick_seconds: float = 0.1, ctx: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_read: Callable[[bytes], None] | None = None,
                 net_filter: Callable[[Message], bool] | None = None,
                 coalesce_seconds: float = 0.001, lazy_commit: bool = True,
                 leader_sends_first: bool = True) -> None:
        """``net_filter(msg) -> False`` drops a message in either direction (fault tests).

        ``lazy_commit``: a commit index alone is not written at once (see the module
        docstring); ``leader_sends_first``: a leader's appends go out before its write.

        ``coalesce_seconds``: how long an append without entries (the leader telling
        a follower a new commit index) may wait for a later append to the same
        follower, which carries that commit too and replaces it; 0 sends at once.
        """
        self.core, self.storage = core, storage
        self.apply, self.restore, self.on_read = apply, restore, on_read
        self.net_filter = net_filter
        self._confirmed: list[ReadState] = []
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.ctx = ctx or zmq.Context.instance()
        self.router = make_socket(self.ctx, zmq.ROUTER, bind=bind, hwm=1000)
        #: the bound address (with the real port when bind used ``:*``)
        self.endpoint: str = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.dealers: dict[int, zmq.Socket] = {}
        self.waits = WaitSet()   # not zmq.Poller: it asked every socket twice per sleep (waitset.py)
        self.waits.add(self.router)
        self._watched: dict[zmq.Socket | int, Callable[[], None]] = {}
        #: set while run_once runs the watched handlers: propose/read_index leave the
        #: drain to the end of run_once, so everything proposed in one wake-up shares
        #: one Ready (one storage write, one append per follower): group commit
        self._defer_drain = False
        self.next_tick = clock() + tick_seconds
        self.dropped = {"bad_frames": 0, "send_full": 0}
        self.coalesce_seconds = coalesce_seconds
        #: held appends without entries, by follower, all sent at ``_held_until``
        self._held: dict[int, Message] = {}
        self._held_until = 0.0
        #: follower -> last index after its forwarded proposals (MsgProp): commits go
        #: to it at once (it waits to apply them) until one covering that index was sent
        self._forwarded: dict[int, int] = {}
        self.lazy_commit = lazy_commit
        self.leader_sends_first = leader_sends_first
        #: the hard state last written, and a newer one that only moved commit (not written yet)
        self._saved_hs = core.hard_state()
        self._unsaved_hs = None

    def connect(self, peers: dict[int, str]) -> None:
        """Open a DEALER to every other member: ``{node id: endpoint}``."""
        for nid, endpoint in peers.items():
            if nid == self.core.id or nid in self.dealers:
                continue
            # immediate: no queueing for peers that are not connected
            self.dealers[nid] = make_socket(self.ctx, zmq.DEALER, connect=endpoint, hwm=1000,
                                            identity=str(self.core.id).encode(), immediate=True)

    def watch(self, sock: zmq.Socket | int, handler: Callable[[], None]) -> None:
        """Also poll ``sock`` (a socket or a descriptor) in ``run_once`` and call ``handler`` when it
        is readable. The handler reads a socket until it is empty (a ``readable`` loop) or leaves it
        stale (any receive does): the next ``run_once`` then looks at it first."""
        self.waits.add(sock)
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
        if self._held:
            wait = min(wait, max(0.0, self._held_until - now))
        socks, fds = self.waits.wait(math.ceil(wait * 1000))  # rounded down, it would spin the last ms
        events = socks | fds
        self._defer_drain = True
        try:
            for sock, handler in self._watched.items():
                if sock in events:
                    handler()
        finally:
            self._defer_drain = False
        if self._watched and self.core.has_ready():
            self._drain()  # proposals go out before the peers' backlog is read
        if self.router in events:
            while readable(self.router):   # a zmq.Again raised cost more than the ask
                self._on_frames(self.router.recv_multipart(zmq.NOBLOCK))
                if self.core.log.committed > self.core.log.applied:
                    self._drain()  # apply (and answer) as soon as an entry commits
        now = self.clock()
        if now >= self.next_tick:
            # One tick per call; after a long stall, do not burst the missed ones.
            self.next_tick = max(self.next_tick + self.tick_seconds, now)
            self.core.tick()
        self._drain()
        if self._held and self.clock() >= self._held_until:
            held, self._held = self._held, {}
            for m in held.values():
                self._send(m)

    def _on_frames(self, frames: list[bytes]) -> None:
        """``frames``: the sender's identity (added by the ROUTER), then one message frame."""
        try:
            if len(frames) != 2:
                raise WireError(f"raft: {len(frames) - 1} frames, expected 1")
            m = codec.decode(frames[1])
        except WireError:
            self.dropped["bad_frames"] += 1
            return
        if m.dst == self.core.id and (self.net_filter is None or self.net_filter(m)):
            self.core.step(m)
            if m.type is MsgType.PROP:
                self._forwarded[m.src] = self.core.log.last_index()

    def read_index(self, context: bytes) -> None:
        """Start a ReadIndex read; ``on_read(context)`` is called when it may be served."""
        self.core.read_index(context)
        if not self._defer_drain:
            self._drain()

    def _drain(self) -> None:
        while (rd := self.core.ready()) is not None:
            hs = rd.hard_state
            # Only the commit index moved: it is volatile in Raft (a restarted member
            # learns it again from the leader), so no write now; it rides along with
            # the next write of entries, or is saved at close.
            commit_only = (self.lazy_commit and hs is not None and not rd.entries and rd.snapshot is None
                           and (hs.term, hs.vote) == (self._saved_hs.term, self._saved_hs.vote))
            if commit_only:
                self._unsaved_hs, hs = hs, None
            elif hs is None and rd.entries and self._unsaved_hs is not None:
                hs = self._unsaved_hs
            leading = self.core.role is Role.LEADER
            # A leader may send its appends before its own write (Raft dissertation
            # §10.2.1): it counts itself for a commit only when it steps an ack, which
            # happens after this write returns. Not when term or vote changed (a vote
            # or its answer must follow the write of the vote).
            send_first = (leading and self.leader_sends_first and rd.entries and rd.snapshot is None
                          and (hs is None or (hs.term, hs.vote) == (self._saved_hs.term, self._saved_hs.vote)))
            if send_first:
                self._send_ready(rd)
            failpoint("raft_before_persist")
            if hs is not None or rd.entries or rd.snapshot is not None:
                self.storage.save(hs, rd.entries, rd.snapshot)  # durable first
                if hs is not None:
                    self._saved_hs, self._unsaved_hs = hs, None
            failpoint("raft_after_persist")
            # A leader applies (answers its clients) before sending: what it sends
            # then are follow-ups (the new commit, further batches). A follower sends
            # first: its acks are what the leader waits for. The contract allows both.
            if leading:
                self._apply_ready(rd)
            if not send_first:
                self._send_ready(rd)
            if not leading:
                self._apply_ready(rd)
            self._confirmed += rd.read_states
            self.core.advance(rd)
            self._serve_reads()

    def _send_ready(self, rd: Ready) -> None:
        for m in rd.messages:
            if m.type is MsgType.APP:
                waits = self._forwarded.get(m.dst)
                if waits is not None and m.commit >= waits:
                    del self._forwarded[m.dst]  # this append tells it its entries committed
                if not m.entries and self.coalesce_seconds > 0 and waits is None:
                    # Only a commit index to tell (or a probe): wait a little for an
                    # append with entries, the next proposal's, that says it too.
                    if not self._held:
                        self._held_until = self.clock() + self.coalesce_seconds
                    self._held[m.dst] = m  # an older held one is superseded
                    continue
                # Built later, so its commit >= a held one's: that one is redundant.
                self._held.pop(m.dst, None)
            self._send(m)

    def flush_commit(self) -> None:
        """Write a commit index that moved since the last write (at close: a restart applies up to it)."""
        if self._unsaved_hs is not None:
            self.storage.save(self._unsaved_hs, [], None)
            self._saved_hs, self._unsaved_hs = self._unsaved_hs, None

    def _apply_ready(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.restore(rd.snapshot)
        for e in rd.committed:
            self.apply(e)

    def _send(self, m: Message) -> None:
        sock = self.dealers.get(m.dst)
        if sock is None or (self.net_filter is not None and not self.net_filter(m)):
            return
        try:
            sock.send(codec.encode(m), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped["send_full"] += 1

    def _serve_reads(self) -> None:
        applied = self.core.log.applied
        while self._confirmed and self._confirmed[0].index <= applied:
            rs = self._confirmed.pop(0)
            if self.on_read is not None:
                self.on_read(rs.context)

    def close(self) -> None:
        try:
            self.flush_commit()
        except Exception:  # noqa: BLE001 - closing anyway; the commit is learnt again from the leader
            pass
        for s in self.dealers.values():
            s.close(linger=0)
        self.router.close(linger=0)
