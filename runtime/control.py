"""The node's control endpoint: a ROUTER socket answering JSON requests from deft-ctl.

Request: one frame of JSON ``{"cmd": "status"}`` (from a DEALER; a REQ's empty
delimiter frame is accepted too). Reply: the same envelope, then one JSON
frame; ``{"ok": false, "error": "..."}`` for anything malformed. A garbage
frame is counted and answered, never fatal.

The client side is here too (``query``, ``query_all``): deft-ctl, the
controller's route pushes and the tests all speak through it.

A *deferred* handler gets ``(request, respond)`` and answers later by calling
``respond(body)`` once (a Raft write is answered when it is applied).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import zmq

from deft.runtime.sockets import make_socket, readable

Handler = Callable[[dict], dict]


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, handlers: dict[str, Handler], log,
                 deferred: dict[str, Callable[[dict, Callable[[dict], None]], None]] | None = None):
        self.sock = make_socket(ctx, zmq.ROUTER, bind=endpoint, domain="control")   # operators too
        self.handlers = handlers
        self.deferred = deferred or {}
        self.log = log
        self.bad_requests = 0

    def handle_one(self) -> None:
        frames = self.sock.recv_multipart(zmq.NOBLOCK)
        if len(frames) < 2:
            self.bad_requests += 1
            return
        envelope, payload = frames[:-1], frames[-1]
        reply = self._dispatch(payload, envelope)
        if reply is not None:
            self._send(envelope, reply)

    def handle_all(self) -> None:
        """Answer everything that is waiting (for a poll loop owned by someone else)."""
        while readable(self.sock):   # asked, not a zmq.Again raised: cheaper, and it leaves the socket
            self.handle_one()            # known empty (waitset.py)

    def _send(self, envelope: list[bytes], reply: dict) -> None:
        self.sock.send_multipart(envelope + [orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)])

    def _dispatch(self, payload: bytes, envelope: list[bytes] | None = None) -> dict | None:
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self.bad_requests += 1
            return {"ok": False, "error": 'request must be an object with a string "cmd"'}
        if request["cmd"] in self.deferred and envelope is not None:
            def respond(body: dict) -> None:
                self._send(envelope, body if "ok" in body else {"ok": True, **body})
            try:
                self.deferred[request["cmd"]](request, respond)
            except (KeyError, ValueError, TypeError) as exc:
                self.bad_requests += 1
                return {"ok": False, "error": f"{request['cmd']}: {exc}"}
            return None
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            self.bad_requests += 1
            known = sorted([*self.handlers, *self.deferred])
            return {"ok": False, "error": f"unknown cmd {request['cmd']!r}; known: {known}"}
        try:
            return {"ok": True, **handler(request)}
        except (KeyError, ValueError, TypeError) as exc:
            self.bad_requests += 1
            return {"ok": False, "error": f"{request['cmd']}: {exc}"}

    def close(self) -> None:
        self.sock.close()


# -- the client side (deft-ctl, the controller's route pushes, tools and tests) ---------------------

class NoAnswer(Exception):
    pass


def query(control_addr: str, request: dict, timeout_ms: int = 2000) -> dict:
    """Send one JSON request to a control endpoint and return the decoded reply."""
    ctx = zmq.Context.instance()
    sock = make_socket(ctx, zmq.DEALER, connect=control_addr)
    try:
        sock.send(orjson.dumps(request))
        if not sock.poll(timeout_ms, zmq.POLLIN):
            raise NoAnswer(f"{control_addr}: no answer within {timeout_ms} ms")
        return orjson.loads(sock.recv())
    finally:
        sock.close()


def query_all(addrs: dict[str, str], request: dict, timeout_ms: int = 2000) -> dict[str, dict | None]:
    """Send one request to several control endpoints at once; their replies (None: none in time).

    One deadline for all: a node that does not answer costs ``timeout_ms`` once, not once per node.
    """
    ctx = zmq.Context.instance()
    socks = {name: make_socket(ctx, zmq.DEALER, connect=addr) for name, addr in addrs.items()}
    replies: dict[str, dict | None] = dict.fromkeys(addrs)
    try:
        poller = zmq.Poller()
        payload = orjson.dumps(request)
        for sock in socks.values():
            sock.send(payload)
            poller.register(sock, zmq.POLLIN)
        waiting = {sock: name for name, sock in socks.items()}
        deadline = time.monotonic() + timeout_ms / 1000
        while waiting and (left := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(max(1, int(left * 1000))):
                try:
                    replies[waiting.pop(sock)] = orjson.loads(sock.recv())
                except orjson.JSONDecodeError:
                    pass  # garbage: counts as no answer
                poller.unregister(sock)
        return replies
    finally:
        for sock in socks.values():
            sock.close()
