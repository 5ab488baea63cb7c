"""The controller's lease on the wire: a thread that claims or renews it and collects the votes.

The lease core (``lease.py``) says what to ask and what the answers mean;
this thread carries them, every ``lease_ms / 4``, on one DEALER per remote
voter. It is a thread of its own because the controller's loop blocks for
up to 500 ms on a node that does not answer (a route push, a freeze): a
renewal waiting behind it would let the lease lapse on a healthy controller.
The loop asks ``active()`` before everything it does as the active one.

Nothing queues for a voter that is not connected (``immediate``): an old
request delivered late could only hold the lease for a controller that no
longer wants it. Signals stay with the main thread (as for the beat thread).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable

import orjson
import zmq

from deft.runtime.controller.lease import LeaseCandidate, LeaseVoter, serve_request
from deft.runtime.sockets import make_socket, readable, send_nowait
from deft.runtime.waitset import WaitSet


class LeaseKeeper:
    def __init__(self, ctx: zmq.Context, holder: str, control: str, peers: list[str], witnesses: list[str],
                 lease_ms: int, first_ms: float, clock: Callable[[], float]):
        """``first_ms``: when to ask first (a standby lets the others go first); ``clock``: ms, monotonic."""
        self.ctx, self.clock, self.lease_ms = ctx, clock, lease_ms
        self.remote = [*peers, *witnesses]
        self.candidate = LeaseCandidate(holder, ["self", *self.remote], lease_ms, control)
        self.voter = LeaseVoter()
        self.next_ms = first_ms
        self.bad_replies = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    # -- for the controller's loop ------------------------------------------------------------------
    def active(self) -> bool:
        with self._lock:
            return self.candidate.active(self.clock())

    @property
    def term(self) -> int:
        return self.candidate.term

    def vote(self, request: dict) -> dict:
        """A peer controller's lease request: this controller votes too."""
        with self._lock:
            return serve_request(self.voter, request, self.clock())

    def deposed_by(self, term: int, holder: str | None) -> None:
        """A node's beat named the controller it obeys."""
        with self._lock:
            held = bool(self.candidate.grants)
            self.candidate.deposed_by(term, holder)
            if held and not self.candidate.grants:
                self.next_ms = self.clock()   # ask again at once, above that term

    def known_active(self) -> tuple[str | None, str]:
        """(holder, control endpoint) of the active controller as far as this one knows (not itself)."""
        with self._lock:
            grant = self.voter.grant
            if grant.holder and self.clock() < grant.expires_ms and grant.holder != self.candidate.holder:
                return grant.holder, grant.control
            return self.candidate.other or (None, "")

    def status(self) -> dict:
        with self._lock:
            c = self.candidate
            return {"voters": len(c.voters), "majority": c.majority, "granted": len(c.grants),
                    "left_ms": round(max(0.0, c.until_ms() - self.clock()), 1), "bad_replies": self.bad_replies}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        socks = {url: make_socket(self.ctx, zmq.DEALER, connect=url, hwm=4, immediate=True) for url in self.remote}
        voter_of = {sock: url for url, sock in socks.items()}
        waits = WaitSet()   # zmq.Poller asked all four sockets twice per sleep, two system calls each
        for sock in socks.values():
            waits.add(sock)
        try:
            while not self._stop.is_set():
                wait = max(0.0, self.next_ms - self.clock())   # answers wake it sooner
                if socks:
                    ready, _ = waits.wait(math.ceil(wait))
                    for sock in ready:
                        self._replies(sock, voter_of[sock])
                else:   # a lone controller: zmq's poll with no sockets returns at once (it spun a core)
                    self._stop.wait(wait / 1000)
                if self.clock() >= self.next_ms:
                    self._ask(socks.values())
        finally:
            for sock in socks.values():
                sock.close()

    def _ask(self, socks) -> None:
        """Claim or renew: our own vote at once, the others' answers come on their sockets."""
        with self._lock:
            now = self.clock()
            request = self.candidate.request(now)
            own = self.voter.request(self.candidate.holder, request["term"], self.lease_ms,
                                     self.candidate.control, now)
            self.candidate.on_reply("self", {**own, "seq": request["seq"]}, now)
            self.next_ms = now + self.lease_ms / 4
        payload = orjson.dumps(request)
        for sock in socks:   # one not connected (or behind) would not answer this round anyway
            send_nowait(sock, [payload])

    def _replies(self, sock: zmq.Socket, voter: str) -> None:
        while readable(sock):   # found empty: the wait set need not ask it before the next sleep
            frame = sock.recv(zmq.NOBLOCK)
            try:
                reply = orjson.loads(frame)
            except orjson.JSONDecodeError:
                reply = None
            if not isinstance(reply, dict):
                self.bad_replies += 1
                continue
            with self._lock:
                self.candidate.on_reply(voter, reply, self.clock())
