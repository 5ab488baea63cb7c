"""The one place ZeroMQ sockets are made, so options and CURVE live together.

Every ZeroMQ socket of the runtime and its tools comes from ``make_socket``
(``tests/test_packaging.py`` checks that no other module calls ``.socket(``
on a context).

With keys (``use_keys``: a process whose config has ``[security] keys``, or
``deft-ctl --keys``) every socket but inproc ones speaks CURVE: a socket that
binds (or ``serve``) serves with the cluster's key pair and asks its
context's ZAP handler (a thread per context, started with the first such
socket) whether the client's key is a member's (``domain="cluster"``) or, on
control sockets (``domain="control"``), a member's or an operator's; any other
peer, plain or with another key, is dropped during the handshake and gets
nothing. A socket that connects presents this process's own key. Both ends
of every connection are made here, so none can miss it.
"""

from __future__ import annotations

import signal

import zmq

from deft.runtime.security import KeyCheck, Keys

_keys: Keys | None = None
_authenticators: dict[int, object] = {}   # id(context) -> its ZAP handler (ThreadAuthenticator)


def use_keys(keys: Keys | None) -> None:
    """Every socket made from now on in this process speaks CURVE with ``keys`` (None: plain)."""
    global _keys
    _keys = keys


def keys_in_use() -> Keys | None:
    return _keys


class Socket(zmq.Socket):
    """A ZeroMQ socket that knows whether it was used since ``readable`` last found it empty.

    Its descriptor (``ZMQ_FD``) is edge-triggered, and every send or receive may take in the
    commands that would have made it signal, so a ``stale`` socket can hold a message that
    nothing signals: ``waitset.WaitSet`` asks such a socket before it sleeps, and only such.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["stale"] = True   # pyzmq maps attribute writes to socket options

    def send(self, data, flags=0, copy=True, track=False, **kwargs):
        self.__dict__["stale"] = True
        return super().send(data, flags, copy=copy, track=track, **kwargs)

    def recv(self, flags=0, copy=True, track=False):
        self.__dict__["stale"] = True
        return super().recv(flags, copy=copy, track=track)


def make_socket(ctx: zmq.Context, kind: int, *, bind: str | None = None, connect: str | None = None,
                hwm: int = 10_000, identity: bytes | None = None, immediate: bool = False,
                subscribe: bytes | None = None, serve: bool = False, domain: str = "cluster") -> zmq.Socket:
    """A socket with linger 0 and both high-water marks at ``hwm``.

    ``identity`` names a DEALER to its ROUTER; ``immediate`` queues nothing for a
    peer that is not connected; ``subscribe`` is a SUB socket's topic prefix;
    ``serve`` marks a socket its caller binds later (CURVE server); ``domain``
    says who may connect to a serving socket ("control": operators too).
    """
    sock = ctx.socket(kind, socket_class=Socket)
    sock.linger = 0  # an abandoned socket must never hang a process on exit
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    if kind == zmq.ROUTER:
        sock.router_mandatory = False  # a reply to a vanished peer is dropped, not an error
    if identity is not None:
        sock.identity = identity
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if _keys is not None and not (bind or connect or "").startswith("inproc://"):
        try:
            if bind or serve:
                _serve(ctx, sock, _keys, domain)
            else:
                sock.curve_secretkey = _keys.secret
                sock.curve_publickey = _keys.public
                sock.curve_serverkey = _keys.server_public
        except BaseException:
            sock.close()
            raise
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


def send_nowait(sock: zmq.Socket, frames: list, copy: bool = True) -> bool:
    """Send ``frames`` without blocking; False if no peer takes them now (not connected, behind, or
    refused at the handshake: a refused PUSH or DEALER has no peer left, and a blocking send would
    wait for ever). ``copy=False``: pyzmq references large buffers instead of copying them."""
    try:
        send_frames(sock, frames, _NOBLOCK, copy)
    except zmq.Again:
        return False
    return True


# plain ints: zmq's enum operations cost per call, and these run in every round of a busy process
_EVENTS, _POLLIN, _POLLOUT, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0, copy: bool = True) -> None:
    """``sock.send_multipart(frames, flags, copy=copy)`` for frames that are bytes or buffers.

    pyzmq's own checks every frame's type and builds ``SNDMORE | flags`` as an enum per frame
    (Python-level enum code: in a busy worker, enum calls from ZeroMQ's helpers were a few per cent
    of its CPU). ZeroMQ applies the high-water mark at a message's first frame, so a NOBLOCK send
    either raises ``zmq.Again`` there, with nothing sent, or sends every frame.
    """
    send = sock.send
    more = flags | _SNDMORE
    for frame in frames[:-1]:
        send(frame, more, copy=copy)
    send(frames[-1], flags, copy=copy)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """``sock.recv_multipart(flags, copy=False)``: the message's ``zmq.Frame`` objects, ending at the
    frame whose ``more`` is False (pyzmq's asks the socket for RCVMORE after every frame, an enum
    lookup each)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames


def readable(sock: zmq.Socket) -> bool:
    """A message waits in ``sock`` now (one getsockopt: no Poller built, no zmq.Again raised)."""
    has = bool(sock.get(_EVENTS) & _POLLIN)
    sock.__dict__["stale"] = has   # found empty: its descriptor signals the next message (Socket)
    return has


def writable(sock: zmq.Socket) -> bool:
    """``sock`` would take a message now (below its high-water mark, a peer connected)."""
    events = sock.get(_EVENTS)
    sock.__dict__["stale"] = bool(events & _POLLIN)
    return bool(events & _POLLOUT)


def _serve(ctx: zmq.Context, sock: zmq.Socket, keys: Keys, domain: str) -> None:
    if keys.server_secret is None:
        raise ValueError(f"{keys.name} holds an operator's keys: it cannot serve")
    _authenticator(ctx, keys)
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def _authenticator(ctx: zmq.Context, keys: Keys) -> None:
    """The context's ZAP handler, started once (its thread blocks signals: they are the main thread's)."""
    if id(ctx) in _authenticators:
        return
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        auth.start()   # the thread inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    auth.configure_curve_callback("cluster", KeyCheck(keys.members))
    auth.configure_curve_callback("control", KeyCheck(keys.members | keys.operators))
    _authenticators[id(ctx)] = auth


def refused(ctx: zmq.Context) -> int:
    """Clients this context's ZAP handler turned away (0 without keys)."""
    auth = _authenticators.get(id(ctx))
    if auth is None:
        return 0
    return sum(p.refused for p in auth.credentials_providers.values())


def close_context(ctx: zmq.Context) -> None:
    """Stop the context's ZAP handler (if any) and terminate it: its sockets must be closed."""
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()
    ctx.term()
