"""The supervisor's side of failure detection: heartbeats and failure notices on a PUB socket.

Every ``heartbeat_ms`` the supervisor publishes one HEARTBEAT for its node
with the liveness of each NF worker (pid, alive, restarts) as it sees them.
The supervisor reaps its children, so it knows a worker is dead the moment
the kernel does; it then publishes FAILED at once instead of letting the
controller wait for missed beats. A dead supervisor is a dead node: its
children die with it (PDEATHSIG) and its beats stop, which the controller's
failure detector notices after ``miss_limit`` intervals.
"""

from __future__ import annotations

import os
import time

import zmq

from deft.runtime import wire
from deft.runtime.sockets import make_socket


class Heartbeats:
    def __init__(self, sup):
        self.sup = sup
        self.interval_ns = sup.config.node.heartbeat_ms * 1_000_000
        # PUB connects to the controller's SUB: many nodes, one bound subscriber
        self.sock = make_socket(sup.zctx, zmq.PUB, connect=sup.config.node.controller, hwm=1000)
        self.seq = 0
        self.next_ns = time.monotonic_ns()

    def due_in_ms(self) -> int:
        """Milliseconds until the next beat, rounded up: rounding down would spin for the last one."""
        return max(0, -(-(self.next_ns - time.monotonic_ns()) // 1_000_000))

    def beat_if_due(self) -> None:
        now = time.monotonic_ns()
        if now < self.next_ns:
            return
        self.next_ns = now + self.interval_ns
        self.seq += 1
        sup = self.sup
        instances = [
            {"id": f"{sup.topo.node_id}/nf{c.index}", "index": c.index, "pid": c.pid, "alive": c.alive,
             "restarts": c.restarts, "ready": bool(c.alive and sup.stats[c.stats_key].get("ready")),
             "lag": self.lag(sup.stats[c.stats_key])}
            for c in sup.children if c.role == "worker"
        ]
        self.send(wire.HEARTBEAT, {"node": sup.topo.node_id, "pid": os.getpid(), "seq": self.seq,
                                   "control": sup.config.node.control, "fabric": sup.config.node.fabric,
                                   "replication": sup.config.node.replication,
                                   "buckets": sup.config.ingress.buckets, "routes_epoch": sup.routes.epoch,
                                   "instances": instances})

    @staticmethod
    def lag(stats) -> int:
        """Replication lag of a worker: its batches waiting for their secondary's vote or for release."""
        return stats.get("repl_in_flight") + stats.get("repl_staged") if "repl_in_flight" in stats.index else 0

    def failed(self, child, decisions: dict[int, int] | None = None) -> None:
        header = {"node": self.sup.topo.node_id, "process": child.stats_key, "pid": child.pid,
                  "exit": child.last_exit}
        if decisions is not None:
            header["decisions"] = {str(p): b for p, b in decisions.items()}
        self.send(wire.FAILED, header)

    def send(self, kind: bytes, header: dict) -> None:
        try:
            self.sock.send_multipart(wire.encode(kind, header), zmq.NOBLOCK)
        except zmq.Again:
            pass  # nobody listening yet, or the controller is slow: a beat is worth nothing late

    def close(self) -> None:
        self.sock.close()
