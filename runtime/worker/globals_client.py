"""A worker's client of its node's global state: batches of NF global operations out, results and changes in.

The supervisor binds ``worker_endpoints(node)``: a ROUTER for requests (one
group-commit entry per output batch, answered with its results once the
node's Raft member applied it) and a PUB of applied changes, which keeps
``replica`` (the NFs' stale-ok ``ctx.globals.local``) current. Requests are
retried with the same (client, seq) until answered: the Raft session applies
an entry once and answers every copy with the first results.
"""

from __future__ import annotations

import itertools
import time

from deft.runtime.worker.pairslot import PendingBatch

GLOBAL_WAIT_S = 10.0        # a synchronous wait (replay, role change) gives up after this: STALE results
GLOBAL_RETRY_S = 0.25       # no answer for this long: propose the entry again (same session slot)
GLOBAL_REFUSED_RETRY_S = 0.05  # the member knows no leader yet: ask again this soon
STALE = "__stale__"         # deft.runtime.consensus.kv.STALE


class GlobalClient:
    """A worker's channel to its supervisor's Raft member (``globalstate.WorkerChannel``).

    ``submit`` sends a ``PendingBatch``'s entry; ``poll`` reads the answers
    (setting ``results``) and the replica's updates; ``tick`` proposes again
    what got no answer within ``GLOBAL_RETRY_S`` (or was refused: no leader),
    with the same (client, seq), so it is applied once. Nothing is dropped:
    a batch waits until its entry is applied. Garbage is counted and ignored.
    """

    def __init__(self, zctx, node_id: str, count: dict):
        import orjson
        import zmq

        from deft.runtime.node.globalstate import MAGIC, worker_endpoints
        from deft.runtime.sockets import make_socket

        self.zmq, self.loads, self.magic = zmq, orjson.loads, MAGIC
        self.count = count
        req, pub = worker_endpoints(node_id)
        self.sock = make_socket(zctx, zmq.DEALER, connect=req)
        self.sub = make_socket(zctx, zmq.SUB, connect=pub, hwm=100_000, subscribe=b"")
        self.replica: dict = {}
        self.requests: dict[bytes, PendingBatch] = {}
        self._ids = itertools.count(1)
        self.sock.send_multipart([MAGIC, b"dump", b"D"])  # the state so far; the PUB brings what changes

    def submit(self, pending: PendingBatch) -> None:
        pending.req_id = next(self._ids).to_bytes(8, "little")
        pending.sent_ns = time.monotonic_ns()
        self.requests[pending.req_id] = pending
        self._send(pending, time.monotonic())

    def _send(self, pending: PendingBatch, now: float) -> None:
        pending.retry_at = now + GLOBAL_RETRY_S
        try:
            self.sock.send_multipart([self.magic, pending.req_id, b"B", pending.client.encode(),
                                      str(pending.seq).encode(), pending.entry], self.zmq.NOBLOCK)
        except self.zmq.Again:
            pass  # the retry sends it

    def forget(self, pending: PendingBatch) -> None:
        self.requests.pop(pending.req_id, None)

    def poll(self) -> None:
        zmq = self.zmq
        while True:
            try:
                msg = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                changes = self.loads(msg)
                if not isinstance(changes, dict):
                    raise ValueError
            except ValueError:
                self.count["global_bad_frames"] += 1
                continue
            self.replica.update(changes)
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.on_reply(frames)

    def on_reply(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 3 or frames[0] != self.magic:
                raise ValueError
            reply = self.loads(frames[2])
            if not isinstance(reply, dict):
                raise ValueError
        except ValueError:
            self.count["global_bad_frames"] += 1
            return
        if frames[1] == b"dump":
            if reply.get("ok") and isinstance(reply.get("data"), dict):
                for key, value in reply["data"].items():
                    self.replica.setdefault(key, value)  # an update from the PUB may be newer
            return
        pending = self.requests.get(frames[1])
        if pending is None:  # the answer to a retry of what is done already
            return
        if reply.get("ok") and "results" in reply:
            pending.results = reply["results"]
            del self.requests[frames[1]]
            if isinstance(reply.get("changes"), dict):  # what this entry changed, in case the PUB lost it
                self.replica.update(reply["changes"])
        else:  # refused (no leader known yet): ask again soon
            pending.retry_at = min(pending.retry_at, time.monotonic() + GLOBAL_REFUSED_RETRY_S)

    def tick(self, now: float) -> None:
        for pending in self.requests.values():
            if now >= pending.retry_at:
                self.count["global_retries"] += 1
                self._send(pending, now)

    def wait(self, pending: PendingBatch, timeout_s: float) -> None:
        """Block until ``pending`` has its results (failover paths only); STALE after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while pending.results is None:
            now = time.monotonic()
            if now >= deadline:
                self.count["global_timeouts"] += 1
                self.forget(pending)
                pending.results = STALE
                return
            self.sock.poll(5)
            self.poll()
            self.tick(time.monotonic())

    def close(self) -> None:
        self.sock.close(0)
        self.sub.close(0)


