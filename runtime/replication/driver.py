"""ZeroMQ transport for the replication cores: the only module of this package that imports zmq.

Topology, per pair: the primary's ``PrimaryLink`` connects a DEALER to the
secondary worker's replication endpoint, a bound ROUTER (``Router``) that may
serve several pairs: it routes each message by the ``pair`` in its header to
that pair's ``SecondaryLink``. Frames are those of ``codec.py``; on the ROUTER
they are preceded by the peer's identity frame.

Contract with the caller (the worker), in both roles:

* ``poll_once(timeout_ms)`` receives what has arrived (waiting at most
  ``timeout_ms`` for the first message), decodes it, steps the core, sends
  the core's ``Send`` actions and returns every other action
  (``WriteDecision``, ``Release``, ``Refused``) in order. It never raises on
  a bad frame: garbage is counted (``bad_frames``) and logged once.
* ``tick()`` forwards one logical tick (the caller owns the timer).
* Output-commit order is the core's: it returns ``WriteDecision(t)`` and
  ``Release(t)``, and commits t to the secondary (a Prepare's
  ``committed_upto``, a Commit) only after the caller reports
  ``core.output_sent(t)``. So every Send goes out at once.
* Sends never block: a full queue (HWM) drops the message and counts it in
  ``dropped``; the protocol's retransmits repair any loss.

Counters on each link: ``sent``, ``received`` (messages decoded and stepped,
refused ones included), ``bad_frames`` (undecodable), ``refused`` (stepped and
refused by the core), ``dropped`` (not sent: HWM reached or no peer yet). The
``Router`` counts what it cannot route to any link in its own ``bad_frames``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import zmq
from deft.runtime.errors import WireError
from deft.runtime.replication.actions import (
    Action,
    Refused,
    Send,
)
from deft.runtime.replication.codec import Codec, peek_pair
from deft.runtime.replication.errors import ProtocolMisuse
from deft.runtime.replication.messages import Delta, Message, Packets
from deft.runtime.replication.primary import PrimaryReplicator
from deft.runtime.replication.secondary import SecondaryReplica
from deft.runtime.sockets import make_socket, readable, recv_frames, send_nowait
from deft.runtime.wire import COPIES

log = logging.getLogger(__name__)

MAX_DRAIN = 256                 # messages per poll_once: bounds the time one call can take
MAX_MSG_BYTES = 256 << 20       # ZMQ_MAXMSGSIZE: a peer sending more is disconnected
MAX_INBOX = 10_000              # messages a Router queues for one link between its polls
_MAX_LOGGED_REASONS = 32        # distinct refusal reasons logged at WARNING (a hostile peer can vary them)

PayloadSource = Callable[[int, np.ndarray], tuple]


class ReplicationLink:
    """One side of one pair: a core, a codec, counters, and the deferred-send rule.

    Subclasses supply ``_receive`` (frames and their origin) and ``_transmit``.
    """

    def __init__(self, core: Any, codec: Codec) -> None:
        self.core = core
        self.codec = codec
        self.sent = self.received = self.bad_frames = self.refused = self.dropped = 0
        self._logged_bad = False
        self._logged_reasons: set[str] = set()
        self.closed = False

    # -- caller API ------------------------------------------------------------------------------

    @property
    def pair(self) -> int:
        return self.core.pair

    @property
    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "bad_frames": self.bad_frames,
                "refused": self.refused, "dropped": self.dropped}

    def poll_once(self, timeout_ms: int = 0) -> list[Action]:
        """Receive, decode, step and send; return the actions the caller must execute, in order."""
        out: list[Action] = []
        for frames, origin in self._receive(timeout_ms):
            msg = self._decode(frames)
            if msg is None:
                continue
            self.received += 1
            actions = self.core.step(msg, checked=True)   # the codec validated it
            if not any(isinstance(a, Refused) for a in actions):
                self._accepted(origin)
            out += self.execute(actions)
        return out

    def tick(self) -> list[Action]:
        """One logical tick of the core (retransmits, Missing requests)."""
        return self.execute(self.core.tick())

    def execute(self, actions: list[Action]) -> list[Action]:
        """Send the Sends; return the other actions.

        For core calls this class does not wrap, e.g.
        ``link.execute(link.core.start_sync(...))``.
        """
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message)
                continue
            if isinstance(action, Refused):
                self._note_refused(action)
            out.append(action)
        return out

    def close(self) -> None:
        self.closed = True

    # -- internals ---------------------------------------------------------------------------------

    def _decode(self, frames: list[Any]) -> Message | None:
        try:
            return self.codec.decode(frames)
        except WireError as e:
            self._bad_frame(str(e))
            return None

    def _bad_frame(self, reason: str) -> None:
        self.bad_frames += 1
        # Log once: a broken or hostile peer must not flood the log; the counter tells the rest.
        if not self._logged_bad:
            self._logged_bad = True
            log.warning("replication pair %s: ignoring a bad message (%s); further ones are only counted",
                        self.pair, reason)
        else:
            log.debug("replication pair %s: bad message: %s", self.pair, reason)

    def _note_refused(self, action: Refused) -> None:
        self.refused += 1
        if action.reason not in self._logged_reasons and len(self._logged_reasons) < _MAX_LOGGED_REASONS:
            self._logged_reasons.add(action.reason)
            log.warning("replication pair %s: refused %s: %s", self.pair,
                        type(action.message).__name__, action.reason)
        else:
            log.debug("replication pair %s: refused %s: %s", self.pair,
                      type(action.message).__name__, action.reason)

    def _send(self, msg: Message) -> None:
        if self._transmit(self.codec.encode(msg)):
            self.sent += 1
        else:
            self.dropped += 1

    def _accepted(self, origin: bytes | None) -> None:
        """A message from ``origin`` was accepted by the core (the secondary learns its peer here)."""

    def _receive(self, timeout_ms: int) -> list[tuple[list[Any], bytes | None]]:
        raise NotImplementedError

    def _transmit(self, frames: list[Any]) -> bool:
        raise NotImplementedError


class PrimaryLink(ReplicationLink):
    """The primary's side: a DEALER connected to the secondary worker's ROUTER.

    ``payloads_for(batch, stamps)`` returns the packets (bytes, aligned with
    ``stamps``) the secondary reported missing; without it, ``Packets`` go
    out without payloads. The link does not own ``ctx``.
    """

    def __init__(self, ctx: zmq.Context, core: PrimaryReplicator, codec: Codec, endpoint: str, *,
                 payloads_for: PayloadSource | None = None, max_msg_bytes: int = MAX_MSG_BYTES) -> None:
        if not isinstance(core, PrimaryReplicator):
            raise ProtocolMisuse("PrimaryLink needs a PrimaryReplicator")
        super().__init__(core, codec)
        self.payloads_for = payloads_for
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.maxmsgsize = max_msg_bytes   # before connect: applies to the new connection
        self.sock.connect(endpoint)

    @property
    def window_open(self) -> bool:
        return self.core.window_open

    def submit_batch(self, batch: int, stamps: np.ndarray, delta: Delta) -> list[Action]:
        """``core.on_batch`` and send the Prepare; WindowFull if ``window_open`` is False."""
        return self.execute(self.core.on_batch(batch, stamps, delta))

    def _send(self, msg: Message) -> None:
        if isinstance(msg, Packets) and msg.payloads is None and self.payloads_for is not None:
            msg = replace(msg, payloads=tuple(self.payloads_for(msg.batch, msg.stamps)))
        super()._send(msg)

    def _receive(self, timeout_ms: int) -> list[tuple[list[Any], bytes | None]]:
        return [(frames, None) for frames in _drain(self.sock, timeout_ms)]

    def _transmit(self, frames: list[Any]) -> bool:
        return send_nowait(self.sock, frames, copy=False)   # the numpy buffers referenced, not copied

    def close(self) -> None:
        if not self.closed:
            self.sock.close(linger=0)
        super().close()


class Router:
    """A secondary worker's replication endpoint: one bound ROUTER, messages routed by pair.

    ``endpoint`` may use a wildcard port (``tcp://127.0.0.1:*``); ``self.endpoint``
    is the bound address. ``bad_frames`` counts messages no attached link can
    take (garbage before the pair is known, or an unknown pair).

    The same socket receives the packet copies other nodes' io processes send
    this worker's replicas (kind ``COPIES``: a byte no replication message
    uses); they go to ``on_copies(frames)``, set by the owner.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, *, max_msg_bytes: int = MAX_MSG_BYTES) -> None:
        self.sock = make_socket(ctx, zmq.ROUTER, serve=True)
        self.sock.maxmsgsize = max_msg_bytes   # before bind: applies to accepted connections
        self.sock.bind(endpoint)
        self.endpoint: str = self.sock.last_endpoint.decode()
        self.bad_frames = 0
        self._links: dict[int, SecondaryLink] = {}
        self._logged_bad = False
        self.on_copies: Callable[[list[bytes]], None] | None = None

    def attach(self, link: SecondaryLink) -> None:
        if link.pair in self._links:
            raise ProtocolMisuse(f"Router: pair {link.pair} is already attached")
        self._links[link.pair] = link

    def detach(self, link: SecondaryLink) -> None:
        if self._links.get(link.pair) is link:
            del self._links[link.pair]

    def pump(self, timeout_ms: int) -> None:
        """Move what arrived (waiting at most ``timeout_ms``) into the links' inboxes."""
        for frames in _drain(self.sock, timeout_ms):
            if len(frames) < 2:   # a ROUTER always prepends the identity; be defensive anyway
                self._bad("no identity or no message")
                continue
            identity, body = frames[0].bytes, frames[1:]
            if self.on_copies is not None and body[0].bytes == COPIES:
                self.on_copies([f.bytes for f in body])
                continue
            try:
                pair = peek_pair(body)
            except WireError as e:
                self._bad(str(e))
                continue
            link = self._links.get(pair)
            if link is None:
                self._bad(f"unknown pair {pair}")
            elif len(link.inbox) >= MAX_INBOX:
                link.dropped += 1
            else:
                link.inbox.append((body, identity))

    def send(self, identity: bytes, frames: list[Any]) -> bool:
        return send_nowait(self.sock, [identity, *frames], copy=False)

    def close(self) -> None:
        self.sock.close(linger=0)

    def _bad(self, reason: str) -> None:
        self.bad_frames += 1
        if not self._logged_bad:
            self._logged_bad = True
            log.warning("replication router %s: ignoring a bad message (%s); further ones are only counted",
                        self.endpoint, reason)


class SecondaryLink(ReplicationLink):
    """The secondary's side: attached to a ``Router`` (which it does not own) under its pair.

    Replies go to the identity of the last message the core accepted (the
    current primary); a refused message (old epoch, garbage) never redirects
    them. Before any accepted message there is no peer and sends are dropped.
    """

    def __init__(self, router: Router, core: SecondaryReplica, codec: Codec) -> None:
        if not isinstance(core, SecondaryReplica):
            raise ProtocolMisuse("SecondaryLink needs a SecondaryReplica")
        super().__init__(core, codec)
        self.router = router
        self.inbox: deque[tuple[list[Any], bytes]] = deque()
        self.peer: bytes | None = None
        router.attach(self)

    def on_packets(self, stamps: np.ndarray, payloads: tuple | list | None = None) -> list[Action]:
        """Duplicates from the switch: buffer them in the core, send the votes they unblock."""
        return self.execute(self.core.on_packets(stamps, payloads))

    def _receive(self, timeout_ms: int) -> list[tuple[list[Any], bytes | None]]:
        # The owner's poll pumped the router into our inbox already: then no second look
        if not self.inbox:
            self.router.pump(timeout_ms)
        out: list[tuple[list[Any], bytes | None]] = []
        while self.inbox and len(out) < MAX_DRAIN:
            out.append(self.inbox.popleft())
        return out

    def _accepted(self, origin: bytes | None) -> None:
        if origin is not None:
            self.peer = origin

    def _transmit(self, frames: list[Any]) -> bool:
        return self.peer is not None and self.router.send(self.peer, frames)

    def close(self) -> None:
        if not self.closed:
            self.router.detach(self)
        super().close()


def _drain(sock: zmq.Socket, timeout_ms: int) -> list[list[zmq.Frame]]:
    """Up to MAX_DRAIN messages, waiting at most ``timeout_ms`` for the first one."""
    if timeout_ms and not sock.poll(timeout_ms, _POLLIN):
        return []
    out = []
    # EVENTS, not a Poller built per call nor a recv raising zmq.Again: asked once per message
    # and once more to find it empty (the worker's wait set relies on that last ask: sockets.Socket)
    while len(out) < MAX_DRAIN and readable(sock):
        # copy=False: large array frames are decoded in place (np.frombuffer on the Frame).
        out.append(recv_frames(sock, _NOBLOCK))
    return out


_POLLIN, _NOBLOCK = int(zmq.POLLIN), int(zmq.NOBLOCK)  # plain ints: enum ops cost
