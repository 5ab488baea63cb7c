"""The node supervisor: owns the node's shared memory, starts and watches its processes.

Start: remove what a crashed predecessor with the same node id left in
/dev/shm, create every ring, doorbell, counter block and the routes
(``deft.runtime.topology`` names them), then start the NF workers and the
io process (ingress, stamping units, switch, egress; with a hot standby).

Run: one poll loop over the control socket (and, with ``[raft]``, the Raft
member's sockets); a child's death wakes it at once (SIGCHLD through a wake-up
pipe), so it reaps and restarts dead children (counted per process) without
looking every few milliseconds (heartbeats have a thread of their own: see
``heartbeat.py``). Stop (SIGTERM/SIGINT): SIGTERM
to every child, SIGKILL after a grace period, then unlink all shared memory.
Children die with the supervisor (PR_SET_PDEATHSIG), so a SIGKILLed
supervisor takes its node down whole; the next start cleans the leftovers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import zmq

from deft.runtime.config import NodeConfig
from deft.runtime.control import ControlServer
from deft.runtime.controller.lease import LeaseVoter, fenced, serve_request
from deft.runtime.dataplane.commit_record import CommitRecord
from deft.runtime.dataplane.sentlog import SentLog
from deft.runtime.dataplane.routes import MAX_PAIRS, RouteError, Routes, RouteSet
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.errors import DeftError
from deft.runtime.node.heartbeat import Heartbeats
from deft.runtime.params import split_host_port
from deft.runtime.procs import io, standby, unit
from deft.runtime.worker import worker
from deft.runtime.procs.egress import UdpSink, send_ring
from deft.runtime.worker import bucketmove
from deft.runtime.worker.bucketmove import MoveBox
from deft.runtime.worker.freeze import FREEZE, REASONS, RETRY, FreezeBox, ask_and_wait
from deft.runtime.dataplane.stamper import StamperTable
from deft.runtime.ring import Doorbell, Ring, cleanup_node
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.ring.shm import create_segment, release_segment
from deft.runtime.sockets import close_context
from deft.runtime.waitset import WaitSet
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

RESTART_BACKOFF_S = 0.2     # first restart delay; doubles while a child keeps dying young
IDLE_WAKE_MS = 1000         # with nothing due, look at the children this often anyway
REAP_EVERY_S = 0.1          # and at most this long after the last look while busy, signal or not (a lost
                            # wake-up byte; the pipe holds them, so only if it were ever full)
RESTART_BACKOFF_MAX_S = 5.0
HEALTHY_AFTER_S = 10.0      # a child that ran this long starts again from the first delay
STOP_GRACE_S = 3.0
EGRESS_DRAIN_S = 0.02       # a dead worker's released packets leave before its pairs move (well under a beat miss)


@dataclasses.dataclass
class Child:
    role: str
    index: int
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    died_at: float = 0.0
    backoff: float = RESTART_BACKOFF_S
    last_exit: int | None = None
    standby: subprocess.Popen | None = None  # the io: a started, waiting successor

    @property
    def key(self) -> str:
        return f"{self.role}{self.index}" if self.role == "worker" else self.role

    @property
    def stats_key(self) -> str:
        """Name of the child's counter block (workers' blocks are named after their instance)."""
        return f"nf{self.index}" if self.role == "worker" else self.key

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ChildLook:
    """When the supervisor's loop looks at its children (``reap_and_restart``): only when one may have
    changed, i.e. a signal came (SIGCHLD, through the wake-up pipe), a dead one waits for its restart,
    or REAP_EVERY_S passed. Every turn, a poll() of each child and each standby (a waitpid each) was
    about a tenth of a Raft member's loop, which turns per message."""

    def __init__(self) -> None:
        self._signalled = True
        self._next = 0.0

    def signalled(self) -> None:
        self._signalled = True

    def due(self, now: float, children) -> bool:
        if not (self._signalled or now >= self._next or any(c.died_at for c in children)):
            return False
        self._signalled, self._next = False, now + REAP_EVERY_S
        return True


class Supervisor:
    def __init__(self, config: NodeConfig, config_path: str, stop, log):
        self.config = config
        self.config_path = os.path.abspath(config_path)
        self.topo = Topology(config)
        self.stop = stop
        self.log = log
        self.started = time.time()
        self.rings: dict[str, Ring] = {}
        self.bells: list[Doorbell] = []
        self.stats: dict[str, CounterBlock] = {}
        self.records: dict[int, CommitRecord] = {}  # per worker: the replicated batches it released
        self.freeze_boxes: dict[int, FreezeBox] = {}  # per worker: planned hand-over requests (freeze.py)
        self.move_boxes: dict[int, MoveBox] = {}      # ... and bucket moves (bucketmove.py)
        self.load_blocks: dict[int, CounterBlock] = {}  # per worker: packets processed per pair (heartbeats)
        self.worker_bells: dict[int, FdBell] = {}
        self.orphan_sink = None   # sends what a dead worker left in its egress ring (finish_releases)
        self.sent_logs: list[SentLog] = []            # per unit: its recent sends to other nodes
        self.routes: Routes | None = None
        self.segments: list[tuple[str, object]] = []
        self.bucket_load = None   # packets per bucket lately (the io's; the autoscaler asks: on_bucket_load)
        self.takeover_bells: dict[str, Doorbell] = {}
        self.ingress_socket: socket.socket | None = None  # bound here, so its queue outlives an io
        self.children: list[Child] = []
        self.zctx = zmq.Context()
        self.control: ControlServer | None = None
        self.heartbeats: Heartbeats | None = None
        self.pending_kill: tuple[str, float] | None = None
        self.globalstate = None  # this node's Raft member, with [raft]
        self.globals_channel = None  # its workers' global operations (WorkerChannel)
        # the controller lease (controller/lease.py): this node votes when a controller lists it as a
        # witness, and obeys no controller whose term is below the newest it obeyed (fencing)
        self.controller_lease = LeaseVoter()

    # -- shared memory ------------------------------------------------------
    def create_shared(self) -> None:
        topo, cfg = self.topo, self.config
        removed = cleanup_node(topo.node_id)
        if removed:
            self.log.warning("removed %d leftover shared-memory objects of node %s", len(removed), topo.node_id)
        if topo.has_ingress:
            mm = create_segment(topo.bucket_load(), 8 * cfg.ingress.buckets)
            self.segments.append((topo.bucket_load(), mm))
            self.bucket_load = np.ndarray((cfg.ingress.buckets,), dtype=np.float64, buffer=mm)
        for u in topo.units:
            self._ring(topo.unit_ring(u), cfg.ingress.ring_slots)
            # the stamper's flow table outlives its unit process: a restarted unit continues every flow
            size = StamperTable.nbytes(cfg.ingress.flows_per_unit)
            mm = create_segment(topo.stamper_table(u), size)
            StamperTable.over(mm, cfg.ingress.flows_per_unit, fresh=True)  # writes the empty table's header
            self.segments.append((topo.stamper_table(u), mm))
            self.sent_logs.append(SentLog.create(topo.sent_log(u)))
            self.stats[f"unit{u}"] = CounterBlock.create(topo.stats(f"unit{u}"), unit.COUNTERS)
        for i in topo.instances:
            self._ring(topo.nf_ring(i), topo.nf_ring_slots())
            if cfg.nf.replicate:  # duplicates travel apart, so a busy primary never starves its peer's votes
                self._ring(topo.dup_ring(i), topo.nf_ring_slots())
            self._ring(topo.egress_ring(i), cfg.egress.ring_slots)
            self.worker_bells[i] = FdBell.create(topo.nf_bell(i))  # a worker polls it beside its sockets
            self.bells.append(self.worker_bells[i])
            self.stats[f"nf{i}"] = CounterBlock.create(topo.stats(f"nf{i}"), worker.counter_names(cfg.nf.kind))
            self.load_blocks[i] = CounterBlock.create(topo.stats(f"load.nf{i}"), [f"pair{p}" for p in range(MAX_PAIRS)])
            self.records[i] = CommitRecord.create(topo.commit_record(i))
            if cfg.nf.replicate:   # the controller's planned hand-overs reach the worker here (freeze.py)
                self.freeze_boxes[i] = FreezeBox.create(topo.stats(f"freeze.nf{i}"))
                self.move_boxes[i] = MoveBox.create(topo.stats(f"move.nf{i}"))
        self.egress_bell = FdBell.create(topo.egress_bell())   # the io polls it with its ingress socket
        self.bells.append(self.egress_bell)
        self.bells.append(FdBell.create(topo.ingress_bell()))
        self.takeover_bells["io"] = Doorbell.create(topo.takeover_bell("io"))
        self.stats["io"] = CounterBlock.create(topo.stats("io"), io.COUNTERS)
        self.routes = Routes.create(topo.routes(), cfg.ingress.buckets, topo.node_id, cfg.node.fabric,
                                    cfg.nf.instances, cfg.node.replication, cfg.node.copies)
        if cfg.ingress.listen.startswith("shm://"):
            self._ring(topo.shm_input(), 1 << 14)
        if cfg.egress.send_to.startswith("shm://"):
            self._ring(topo.shm_output(), 1 << 14)

    def _ring(self, name: str, slots: int) -> None:
        self.rings[name] = Ring.create(name, PACKET_DTYPE, slots)

    def close_shared(self) -> None:
        self.bucket_load = None   # a view of its segment: released below
        if self.orphan_sink is not None:
            self.orphan_sink.close()
        for ring in self.rings.values():
            ring.close()
        for bell in self.bells + list(self.takeover_bells.values()):
            bell.close()
        for block in self.stats.values():
            block.close()
        for record in self.records.values():
            record.close()
        for box in [*self.freeze_boxes.values(), *self.move_boxes.values(), *self.load_blocks.values()]:
            box.close()
        for sent_log in self.sent_logs:
            sent_log.close()
        if self.routes:
            self.routes.close()
        for name, mm in self.segments:
            release_segment(mm, name, unlink=True)
        cleanup_node(self.topo.node_id)  # belt and braces: nothing of ours may stay in /dev/shm

    # -- processes ----------------------------------------------------------
    def _popen(self, child: Child, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "deft.runtime.procs", child.role,
               "--config", self.config_path, "--index", str(child.index), *extra]
        fds: tuple[int, ...] = ()
        if child.role == "io" and self.ingress_socket is not None:
            fds = (self.ingress_socket.fileno(),)
            cmd += ["--socket-fd", str(fds[0])]
        # children do no linear algebra: numpy's OpenBLAS would start a thread per core in each at import
        # (0.27 against 0.18 s of CPU per start here: a third of a child's start-up, paid at every restart)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, pass_fds=fds, env=env)

    def spawn(self, child: Child) -> None:
        self.stats[child.stats_key].set("ready", 0)  # the child sets it once it is attached and serving
        child.proc = self._popen(child, *(["--restarted"] if child.restarts else []))
        child.started_at = time.monotonic()
        self.log.info("started %s pid %d", child.key, child.proc.pid)
        if child.role in standby.ROLES and child.standby is None:
            self.spawn_standby(child)

    def spawn_standby(self, child: Child) -> None:
        """The io's successor: imported and waiting, it takes over in milliseconds."""
        child.standby = self._popen(child, "--standby")
        self.log.info("started %s standby pid %d", child.key, child.standby.pid)

    def take_over(self, child: Child, now: float) -> bool:
        """Promote a dead io's standby (its units resume from the shared flow tables); False if there is none."""
        standby = child.standby
        if standby is None or standby.poll() is not None:
            return False
        self.stats[child.stats_key].set("ready", 0)
        child.proc, child.standby = standby, None
        child.restarts += 1
        child.started_at, child.died_at = now, 0.0
        # name the new owner before waking it: a standby woken by a stale post sees it is not
        # the one and waits again, so two processes never work on one ring
        self.stats[child.stats_key].set("owner", standby.pid)
        bell = self.takeover_bells[child.stats_key]
        while bell.wait(0):  # drop posts left by a standby that died before taking them
            pass
        bell.ring()
        self.log.warning("%s standby pid %d takes over", child.key, standby.pid)
        self.spawn_standby(child)
        return True

    def start_children(self) -> None:
        self.children = [Child("worker", i) for i in self.topo.instances]
        self.children.append(Child("io", 0))
        for child in self.children:
            self.spawn(child)

    def next_restart_ms(self) -> int:
        """Milliseconds until a dead child's back-off ends (IDLE_WAKE_MS if none waits)."""
        now = time.monotonic()
        due = [c.died_at + c.backoff - now for c in self.children if c.died_at]
        return max(1, min((int(d * 1000) + 1 for d in due), default=IDLE_WAKE_MS))

    def reap_and_restart(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.standby is not None and child.standby.poll() is not None:
                self.log.warning("%s standby (pid %d) exited with %s", child.key, child.standby.pid,
                                 child.standby.returncode)
                self.spawn_standby(child)
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.died_at == 0.0:
                child.last_exit = child.proc.returncode
                child.died_at = now
                decisions = self.finish_releases(child.index) if child.role == "worker" else None
                if self.heartbeats:
                    self.heartbeats.failed(child, decisions)
                if now - child.started_at >= HEALTHY_AFTER_S:
                    child.backoff = RESTART_BACKOFF_S
                else:
                    child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX_S) if child.restarts else child.backoff
                self.log.warning("%s (pid %d) exited with %s; restart in %.1f s", child.key, child.proc.pid,
                                 child.last_exit, child.backoff)
            if child.role in standby.ROLES and self.take_over(child, now):
                continue
            if child.role == "worker" and not self.config.nf.restart:
                continue
            if now - child.died_at >= child.backoff:
                child.restarts += 1
                child.died_at = 0.0
                self.spawn(child)

    def finish_releases(self, index: int) -> dict[int, int]:
        """A worker died: finish the release it was in (commit record), see it sent; the decisions.

        The controller moves the worker's pairs to their secondaries when it
        hears of the death; they replay what this worker did not release. So
        everything it did release must have left before. With a udp:// egress
        the worker was its ring's only sender: send what it left, here, now
        (the ring's head is per datagram, so nothing goes twice). Otherwise wait
        (briefly) for the io's egress to empty the ring.
        """
        ring = self.rings[self.topo.egress_ring(index)]
        decisions = self.records[index].recover(ring)
        if self.config.egress.sent_by_workers:
            if len(ring):
                left = len(ring)
                if self.orphan_sink is None:
                    self.orphan_sink = UdpSink(self.config.egress.send_to)
                send_ring(self.orphan_sink, ring)
                self.log.warning("nf%d: sent the %d released packets it left in its egress ring", index, left)
            return decisions
        self.egress_bell.ring()
        deadline = time.monotonic() + EGRESS_DRAIN_S
        while len(ring) and time.monotonic() < deadline:
            time.sleep(0.0002)
        if len(ring):
            self.log.warning("nf%d: egress ring not drained after %.0f ms (%d packets left)", index,
                             EGRESS_DRAIN_S * 1000, len(ring))
        return decisions

    def stop_children(self) -> None:
        procs = [p for c in self.children for p in (c.proc, c.standby) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("pid %d (%s) did not stop within %.0f s of SIGTERM; killed", proc.pid,
                                 " ".join(map(str, proc.args[3:4])), STOP_GRACE_S)
                proc.kill()
                proc.wait()

    # -- routes -----------------------------------------------------------------
    def on_lease(self, request: dict) -> dict:
        """``{"cmd": "lease", ...}``: a controller asks this witness for the lease (``controller/lease.py``)."""
        return serve_request(self.controller_lease, request, time.monotonic() * 1000)

    def fenced(self, request: dict, what: str) -> None:
        """Refuse (ValueError, logged) a deposed controller's request."""
        try:
            fenced(self.controller_lease, request, what)
        except ValueError as exc:
            self.log.warning("%s", exc)
            raise

    def on_set_routes(self, request: dict) -> dict:
        """Install a route set (from the controller): refused when stale or inconsistent, or when its
        controller was deposed, with a log line."""
        self.fenced(request, "routes")
        try:
            routes = RouteSet.from_request(request, self.config.ingress.buckets,
                                           {self.topo.node_id: self.config.nf.instances})
            me = [node[0] for node in routes.nodes].index(self.topo.node_id)
            self.routes.apply(routes, self_node=me)
        except (RouteError, ValueError) as exc:
            self.log.warning("refused routes: %s", exc)
            raise ValueError(str(exc)) from None
        for bell in self.bells:   # the workers and the io take the new roles now, not at their next wake-up
            bell.ring()
        # kept as it came: a restarted controller takes its assignment back from it (on_get_routes)
        self.routes_request = {k: v for k, v in request.items() if k != "cmd"}
        self.log.info("routes epoch %d installed: %d pairs over %d nodes", routes.epoch, len(routes.pairs),
                      len(routes.nodes))
        return {"epoch": routes.epoch}

    # -- global state -------------------------------------------------------------
    def nf_uses_globals(self) -> bool:
        from deft.nfs import Context, make_nf

        return make_nf(self.config.nf.kind, self.config.nf_params(), Context(0, 1)).uses_globals

    def _need_raft(self):
        if self.globalstate is None:
            raise ValueError("this node has no [raft] section: no global state here")
        return self.globalstate

    def on_global_get(self, request: dict, respond) -> None:
        """``{"cmd": "global_get", "key": K, "linearizable": bool}``: this replica's value, or via ReadIndex."""
        gs = self._need_raft()
        key = request["key"]
        if not isinstance(key, str):
            raise ValueError("key must be a string")
        if request.get("linearizable"):
            gs.read(key, respond)
        else:
            respond(gs.get_local(key))

    def on_global_op(self, request: dict, respond) -> None:
        """``{"cmd": "global_op", "op": put|incr|add_to_set|compare_and_set|delete, "key", "args"}``."""
        gs = self._need_raft()
        if not isinstance(request.get("key"), str) or not isinstance(request.get("args", []), list):
            raise ValueError("key must be a string and args a list")
        gs.propose(request["op"], request["key"], tuple(request.get("args", [])), respond)

    def on_raft_member(self, request: dict, respond) -> None:
        """``{"cmd": "raft_member", "op": add_learner|promote|remove, "id": ID, "endpoint": E}`` on the leader:
        one membership change (a new member joins as a learner, then is promoted to voter)."""
        gs = self._need_raft()
        member, op = request.get("id"), request.get("op")
        if not isinstance(member, int) or isinstance(member, bool) or member < 1:
            raise ValueError("id must be a positive member id")
        if op == "add_learner":
            endpoint = request.get("endpoint")
            if not isinstance(endpoint, str):
                raise ValueError("add_learner needs the member's endpoint (tcp://HOST:PORT)")
            gs.add_learner(member, endpoint, respond)
        elif op == "promote":
            gs.promote(member, respond)
        elif op == "remove":
            gs.remove(member, respond)
        else:
            raise ValueError(f"op must be add_learner, promote or remove, got {op!r}")

    def on_raft_transfer(self, request: dict) -> dict:
        """``{"cmd": "raft_transfer", "to": ID}``: this member, the leader, hands leadership to ``to`` (drills)."""
        gs = self._need_raft()
        to = request.get("to")
        if not isinstance(to, int):
            raise ValueError("to must be a member id")
        from deft.runtime.consensus import ConsensusError

        try:
            gs.core.transfer_leadership(to)
        except ConsensusError as exc:
            raise ValueError(str(exc)) from None
        return {"to": to}

    # -- planned hand-overs ---------------------------------------------------
    def on_freeze(self, request: dict) -> dict:
        """``{"cmd": "freeze", "pair": P, "instance": I, "epoch": E}`` for the controller (E: the routes
        whose secondary must be the synced one; a worker behind them says retry).

        Freeze: worker I stops releasing pair P and answers, once nothing of it is in flight, with
        the last batch it released (``freeze.py``). The reply says ``frozen`` with that ``batch``,
        or why not (``retry``: ask again soon, e.g. its secondary is still syncing).
        """
        self.fenced(request, "freeze")
        pair, epoch = request.get("pair"), request.get("epoch", 0)
        for name, value in (("pair", pair), ("epoch", epoch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        index, down = self.box_owner(self.freeze_boxes, request)
        if down:
            return {"frozen": False, "reason": down, "retry": True}
        got = ask_and_wait(self.freeze_boxes[index], FREEZE, pair, self.worker_bells[index].ring, epoch)
        if got is None:
            return {"frozen": False, "reason": f"nf{index} did not answer", "retry": True}
        status, batch = got
        reason = REASONS.get(status, f"status {status}")
        if reason is not None:
            return {"frozen": False, "reason": reason, "retry": status in RETRY}
        self.log.info("pair %d frozen on nf%d for a hand-over after batch %d", pair, index, batch)
        return {"frozen": True, "batch": batch}

    def box_owner(self, boxes: dict, request: dict) -> tuple[int, str | None]:
        """The worker a planned-move request is for (its ``instance``, one with a box) and why it cannot
        answer now (None: it runs)."""
        index = request.get("instance")
        if index not in boxes:
            raise ValueError(f"instance must be a replicating instance of node {self.topo.node_id}, got {index!r}")
        child = self.child_by_name(f"nf{index}")
        return index, None if child is not None and child.alive else f"nf{index} is not running"

    routes_request: dict | None = None

    def on_get_routes(self, request: dict) -> dict:
        """``{"cmd": "get_routes"}``: the last route set installed here, as the controller sent it (with
        its ``controller_state``), or None."""
        return {"routes": self.routes_request}

    def on_bucket_load(self, request: dict) -> dict:
        """``{"cmd": "bucket_load"}``: packets per second of every bucket this node's ingress switched
        lately (nonzero ones; none without an ingress), for the controller's autoscaler."""
        if self.bucket_load is None:
            return {"rates": {}}
        load = self.bucket_load.copy()
        busy = np.flatnonzero(load > 0.01)
        return {"rates": {str(b): round(float(load[b]) / 2, 2) for b in busy.tolist()}}

    def on_move(self, request: dict) -> dict:
        """``{"cmd": "move", ...}``: a step of a bucket move for worker ``instance`` (``bucketmove.serve``)."""
        self.fenced(request, "move")
        index, down = self.box_owner(self.move_boxes, request)
        if down:
            return {"done": False, "reason": down, "retry": True}
        return bucketmove.serve(request, self.move_boxes[index], self.topo.move_files(index),
                                self.worker_bells[index].ring)

    # -- metrics --------------------------------------------------------------
    metrics = None

    def metric_families(self):
        """Prometheus families, read from shared memory when scraped (README, "Metrics")."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from deft.runtime.metrics import counter_families

        node = self.topo.node_id
        workers = list(self.topo.instances)
        yield from counter_families("deft_worker", [({"node": node, "instance": f"nf{i}"}, self.stats[f"nf{i}"].as_dict())
                                                    for i in workers], ["node", "instance"])
        if "io" in self.stats:
            yield from counter_families("deft_io", [({"node": node}, self.stats["io"].as_dict())], ["node"])
        ring = GaugeMetricFamily("deft_worker_input_ring", "packets waiting in the worker's input ring",
                                 labels=["node", "instance"])
        per_pair = CounterMetricFamily("deft_pair_processed", "packets a worker processed as a pair's primary",
                                       labels=["node", "instance", "pair"])
        for i in workers:
            ring.add_metric([node, f"nf{i}"], float(self.rings[self.topo.nf_ring(i)].occupancy()))
            values = self.load_blocks[i].values
            for p in values.nonzero()[0].tolist():
                per_pair.add_metric([node, f"nf{i}", str(p)], float(values[p]))
        yield ring
        yield per_pair

    # -- drills ---------------------------------------------------------------
    def on_kill(self, request: dict) -> dict:
        """``{"cmd": "kill", "target": "nf0" | "io" | "node"}``: SIGKILL it ("ingress", "egress",
        "unit<u>" name the io, which does their jobs).

        A drill for failure tests. The kill happens after the reply is sent, so
        the caller learns which pid went; "node" kills the supervisor itself
        (and with it, by PDEATHSIG, every child): a node failure.
        """
        self.fenced(request, "kill")
        target = request.get("target")
        if target == "node":
            pid = os.getpid()
        else:
            child = self.child_by_name(target)
            if child is None or not child.alive:
                raise ValueError(f"no live process {target!r} on node {self.topo.node_id}")
            pid = child.pid
        # after the reply is out: ZMQ sends from its I/O thread, which a SIGKILL would cut short
        self.pending_kill = (target, time.monotonic() + (0.1 if target == "node" else 0.0))
        return {"target": target, "pid": pid}

    def child_by_name(self, name) -> Child | None:
        if name in ("ingress", "egress", "fabric") or (isinstance(name, str) and name.startswith("unit")):
            name = "io"   # the jobs of the io process, by their old process names
        for child in self.children:
            if name in (child.key, child.stats_key):
                return child
        return None

    def drill_kill(self, target: str) -> None:
        self.pending_kill = None
        self.log.warning("drill: SIGKILL %s", target)
        if target == "node":
            os.kill(os.getpid(), signal.SIGKILL)
        child = self.child_by_name(target)
        if child and child.alive:
            os.kill(child.pid, signal.SIGKILL)

    def check_ports(self) -> None:
        """Bind the ingress socket here (failing at start, with the key named, if it cannot be).

        The supervisor keeps it and hands it to the io and its standby, so
        the datagrams queued in the kernel survive an io crash.
        """
        listen = self.config.ingress.listen
        if not listen.startswith("udp://"):
            return
        host, port = split_host_port(listen.partition("://")[2])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.config.ingress.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.ingress.rcvbuf)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise DeftError(f"{self.config.source}: [ingress] listen {listen}: {exc.strerror}") from None
        self.ingress_socket = sock

    # -- run ------------------------------------------------------------------
    @staticmethod
    def child_death_pipe() -> int:
        """A pipe that becomes readable when a child dies (SIGCHLD, through the wake-up fd)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wake-up byte is what matters
        return r

    def run(self) -> None:
        from deft.runtime.node.status import node_status

        self.create_shared()
        try:
            self.check_ports()
            if self.config.raft is not None:
                from deft.runtime.node.globalstate import GlobalState, WorkerChannel

                self.globalstate = GlobalState(self.config.raft, self.topo.node_id, self.zctx)
                self.globals_channel = WorkerChannel(self.globalstate, self.zctx, self.topo.node_id)
            elif self.nf_uses_globals():  # no Raft: the node's workers share one in-process state
                from deft.runtime.node.globalstate import LocalState, WorkerChannel

                self.globals_channel = WorkerChannel(LocalState(), self.zctx, self.topo.node_id)
            try:
                self.control = ControlServer(self.zctx, self.config.node.control,
                                             {"status": lambda req: node_status(self), "kill": self.on_kill,
                                              "set_routes": self.on_set_routes, "freeze": self.on_freeze,
                                              "move": self.on_move, "bucket_load": self.on_bucket_load,
                                              "get_routes": self.on_get_routes, "lease": self.on_lease,
                                              "raft_transfer": self.on_raft_transfer},
                                             self.log,
                                             deferred={"global_get": self.on_global_get,
                                                       "global_op": self.on_global_op,
                                                       "raft_member": self.on_raft_member})
            except zmq.ZMQError as exc:
                raise DeftError(f"{self.config.source}: [node] control {self.config.node.control}: {exc}") from None
            self.start_children()
            self.log.info("node %s up: control %s, ingress %s, egress %s", self.topo.node_id,
                          self.config.node.control, self.config.ingress.listen, self.config.egress.send_to)
            self.heartbeats = Heartbeats(self) if self.config.node.controller else None
            if self.config.node.metrics:
                from deft.runtime.metrics import MetricsServer

                self.metrics = MetricsServer(self.config.node.metrics, self.metric_families, self.log,
                                             f"{self.config.source}: [node] metrics")
            child_died = self.child_death_pipe()
            look = ChildLook()

            def on_signal() -> None:
                drain_pipe(child_died)
                look.signalled()
            waits = WaitSet()   # zmq.Poller asked every socket twice per sleep: four system calls each
            waits.add(self.control.sock)
            waits.add(child_died)
            if self.globals_channel and not self.globalstate:
                waits.add(self.globals_channel.sock)
            if self.globalstate:  # the Raft driver owns the poll loop; it watches the control socket
                self.globalstate.driver.watch(self.control.sock, self.control.handle_all)
                self.globalstate.driver.watch(self.globals_channel.sock, self.globals_channel.handle_all)
                self.globalstate.driver.watch(child_died, on_signal)
            while not self.stop:
                wait_ms = self.next_restart_ms()   # the beats have a thread of their own
                if self.pending_kill:
                    wait_ms = min(wait_ms, 10)
                due = self.globals_channel.flush_due_ms() if self.globals_channel else None
                if due is not None:   # merged replica updates go out then (WorkerChannel.publish)
                    wait_ms = min(wait_ms, max(1, math.ceil(due)))
                if self.globalstate:
                    self.globalstate.driver.run_once(max_wait=wait_ms / 1000)
                    self.globalstate.maybe_compact()
                else:
                    events, fds = waits.wait(wait_ms)
                    if self.control.sock in events:
                        self.control.handle_all()
                    if self.globals_channel and self.globals_channel.sock in events:
                        self.globals_channel.handle_all()
                    if child_died in fds:
                        on_signal()
                if self.globals_channel:
                    self.globals_channel.flush()
                if look.due(time.monotonic(), self.children):
                    self.reap_and_restart()
                    if self.heartbeats:   # after any FAILED notice is queued: a beat never runs ahead of it
                        self.heartbeats.update()
                if self.pending_kill and time.monotonic() >= self.pending_kill[1]:
                    self.drill_kill(self.pending_kill[0])
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self.stop_children()
            if self.heartbeats:
                self.heartbeats.close()
            if self.globals_channel:
                self.globals_channel.close()
            if self.globalstate:
                self.globalstate.close()
            if self.control:
                self.control.close()
            if self.ingress_socket:
                self.ingress_socket.close()
            close_context(self.zctx)
            self.close_shared()
            self.log.info("node %s stopped", self.topo.node_id)


def drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
