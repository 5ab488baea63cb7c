"""The supervisor's side of failure detection: heartbeats and failure notices on a PUB socket.

Every ``heartbeat_ms`` the supervisor publishes one HEARTBEAT for its node
with the liveness of each NF worker (pid, alive, restarts) as it sees them.
The supervisor reaps its children, so it knows a worker is dead the moment
the kernel does; it then publishes FAILED at once instead of letting the
controller wait for missed beats. A dead supervisor is a dead node: its
children die with it (PDEATHSIG), its sockets close (the controller sees its
connection drop) and its beats stop.

The beats come from a thread of their own, which owns the PUB socket: the
supervisor's loop also runs the node's Raft member, whose log writes and
snapshots (fsync) took 40-540 ms on a busy disk, and beats sent from that loop
stopped meanwhile, so the controller declared live nodes failed (a second
failure beside a real one loses data). The thread beats on time while the
loop waits on the disk (fsync releases the GIL). The loop hands it what a
beat reports (``update``) and the failure notices (``failed``), through a queue.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from typing import Any

import zmq

from deft.runtime import wire
from deft.runtime.sockets import make_socket


class Heartbeats:
    def __init__(self, sup):
        self.sup = sup
        self.interval_s = sup.config.node.heartbeat_ms / 1000
        self.endpoints = sup.config.node.controller   # every controller: the active one and its standbys
        self.seq = 0
        self.sent = 0
        self.bad_beats = 0   # beats that could not be built (logged, skipped: the next one goes on time)
        # Beats that went out more than one interval after their time, and the latest of them: a node
        # whose beats are late enough is failed over while it runs (a false suspicion). Each beat says
        # how late it is, so the controller can tell a late sender from a lost beat or a slow network
        self.late = 0
        self.late_max_ms = 0.0
        self._notices: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._instances: list[dict[str, Any]] = []
        self.update()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def update(self) -> None:
        """The workers as the supervisor sees them now (called from its loop after it reaps)."""
        sup = self.sup
        self._instances = [
            {"id": f"{sup.topo.node_id}/nf{c.index}", "index": c.index, "pid": c.pid, "alive": c.alive,
             "restarts": c.restarts, "stats": sup.stats[c.stats_key], "load": sup.load_blocks[c.index],
             "ring": sup.rings[sup.topo.nf_ring(c.index)]}
            for c in sup.children if c.role == "worker"
        ]

    def failed(self, child, decisions: dict[int, int] | None = None) -> None:
        """Publish a FAILED notice for ``child`` at once (from the beat thread)."""
        header = {"node": self.sup.topo.node_id, "process": child.stats_key, "pid": child.pid,
                  "exit": child.last_exit}
        if decisions is not None:
            header["decisions"] = {str(p): b for p, b in decisions.items()}
        self._notices.put(header)

    def _beat(self) -> dict[str, Any]:
        sup = self.sup
        self.seq += 1
        instances = [
            {"id": i["id"], "index": i["index"], "pid": i["pid"], "alive": i["alive"], "restarts": i["restarts"],
             "ready": bool(i["alive"] and i["stats"].get("ready")), "lag": self.lag(i["stats"]), **self.load(i)}
            for i in self._instances
        ]
        return {"node": sup.topo.node_id, "pid": os.getpid(), "seq": self.seq,
                "control": sup.config.node.control, "fabric": sup.config.node.fabric,
                "replication": sup.config.node.replication, "copies": sup.config.node.copies,
                "buckets": sup.config.ingress.buckets,
                "routes_epoch": sup.routes.epoch, "instances": instances,
                # the newest controller this node obeys: a deposed one learns it was (lease.py)
                "controller_fence": list(sup.controller_lease.fence)}

    @staticmethod
    def load(instance: dict) -> dict[str, Any]:
        """What the controller's load per pair is made of (controller/load.py): the worker's busy time and
        packets per pair, cumulative, and its input ring's occupancy now."""
        values = instance["load"].values
        pairs = {str(p): int(values[p]) for p in values.nonzero()[0].tolist()}
        return {"busy_ns": instance["stats"].get("busy_ns"), "pairs": pairs, "in_ring": instance["ring"].occupancy()}

    @staticmethod
    def lag(stats) -> int:
        """Replication lag of a worker: its batches waiting for their secondary's vote or for release."""
        return stats.get("repl_in_flight") + stats.get("repl_staged") if "repl_in_flight" in stats.index else 0

    def _run(self) -> None:
        # Signals (SIGCHLD for every child that dies, stops or continues) go to the supervisor's main
        # thread only: one delivered here interrupted the timed queue wait, which then never woke again
        # (every node paused and resumed stopped beating for good)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        # PUB connects to every controller's SUB (many nodes, one bound subscriber each): every beat and
        # notice goes to each, so a standby's view is as fresh as the active one's
        sock = make_socket(self.sup.zctx, zmq.PUB, hwm=1000)
        for endpoint in self.endpoints:
            sock.connect(endpoint)
        try:
            next_beat = time.monotonic()
            while not self._stop.is_set():
                try:
                    notice = self._notices.get(timeout=max(0.0, next_beat - time.monotonic()))
                    if notice is not None:   # None: close() waking us
                        self._send(sock, wire.FAILED, notice)
                    continue
                except queue.Empty:
                    pass
                # The beat is built first, then every notice queued by then goes, then the beat: the loop
                # queues a death's notice before it updates what beats report, so a beat that shows
                # the worker dead always follows its notice. (Sent the other way round, a controller
                # that heard of the death from a beat failed the pair over without the dead worker's
                # decision: its last batch in doubt and replayed, a packet out twice, in about 1 of 8
                # runs of a bucket-move kill test)
                now = time.monotonic()
                late_s, next_beat = now - next_beat, now + self.interval_s
                self.note_lateness(late_s)
                try:
                    beat = self._beat()
                    beat["late_ms"] = round(late_s * 1000, 1)
                except Exception:   # noqa: BLE001 - a thread that dies here fails its whole node falsely
                    self.bad_beats += 1
                    if self.bad_beats <= 3:
                        self.sup.log.exception("a heartbeat could not be built; the next one is tried")
                    continue
                self._send_queued(sock)
                self._send(sock, wire.HEARTBEAT, beat)
            self._send_queued(sock)   # notices raised while stopping still go out
        finally:
            sock.close()

    def note_lateness(self, late_s: float) -> None:
        late_ms = late_s * 1000
        self.late_max_ms = max(self.late_max_ms, late_ms)
        if late_s > self.interval_s:
            self.late += 1
            if self.late <= 5 or self.late % 100 == 0:
                self.sup.log.warning("heartbeat %.0f ms late (due every %.0f ms; %d late so far): the beat thread "
                                     "waited for a core or for the GIL", late_ms, self.interval_s * 1000, self.late)

    def _send_queued(self, sock: zmq.Socket) -> None:
        while True:
            try:
                notice = self._notices.get_nowait()
            except queue.Empty:
                return
            if notice is not None:
                self._send(sock, wire.FAILED, notice)

    def _send(self, sock: zmq.Socket, kind: bytes, header: dict) -> None:
        try:
            sock.send_multipart(wire.encode(kind, header), zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            pass  # nobody listening yet, or the controller is slow: a beat is worth nothing late

    def close(self) -> None:
        self._stop.set()
        self._notices.put(None)   # wake the thread (a None notice is never sent)
        self._thread.join(2)
