"""``deft-controller --config controller.toml``: failure detection and the cluster's status.

    [controller]
    control = "tcp://127.0.0.1:7000"      # ROUTER for deft-ctl --controller
    heartbeats = "tcp://127.0.0.1:7001"   # SUB, bound here; node supervisors connect their PUB
    heartbeat_ms = 10                     # expected beat interval of the nodes
    manage_routes = true                  # place pairs and push routes when the live nodes change
    miss_limit = 5                        # a node silent for heartbeat_ms x miss_limit has failed
                                          # (3 gave false suspicions on a loaded 2-core machine)
    expect_nodes = 1                      # place the pairs once this many nodes are up; their number is
                                          # fixed from then on (later nodes only take secondaries)
    fresh_grace_ms = 500                  # a pair whose every replica's node is suspected waits this long
                                          # for one to come back (same process: state kept) before it
                                          # restarts with fresh state
    id = "controller1"                    # its name in status and logs (default: its control endpoint)
    peers = ["tcp://127.0.0.1:7010"]      # control endpoints of the other controllers (a standby)
    witnesses = ["tcp://127.0.0.1:7101", ...]  # node control endpoints that vote on who is active
    lease_ms = 500                        # an active controller holds its lease this long per renewal
    standby = false                       # true: let the others take the lease first at start
    rebalance_after_ms = 0                # > 0: rebalance this long after an instance that failed can take
                                          # roles again (a restarted worker, a node back): a failover leaves
                                          # the dead one's pairs on their secondaries' workers (0: on request)

With peers, one controller is active at a time (``lease.py``): it holds the
lease from a majority of the voters (the controllers and the witnesses) and
renews it every lease_ms / 4; the others watch the same beats and answer
``status``; every other request gets an error naming the active one
(``active``: its endpoint; deft-ctl follows it). Every route set and planned
step carries the term of the lease: a node refuses a term below the newest it
obeyed, so a deposed controller changes nothing.

Planned operations (``operations.py``, with ``manage_routes``): ``rebalance``
spreads primaries and secondaries over the live nodes, ``drain`` moves every
role off a node (``undrain`` lets it take roles again), one at a time;
``operation`` reports one. A node that joins after the first placement takes
roles through them.

One poll loop: heartbeats and failure notices in (garbage frames are counted
and ignored), the failure detector ticked every heartbeat_ms, deft-ctl
requests answered, and a monitored connection to every node's control socket
(``liveness.py``), whose closing declares the node failed at once: a dead
supervisor is known in about a millisecond, a silent one after the beats. Requests: ``status``, and the drills ``fail`` with
``{"what": "nf"|"node", "id": ...}``, which ask the owning node's supervisor to
SIGKILL the process (an instance id is ``<node>/nf<i>``).

Routes (``placement.Assignment``): once ``expect_nodes`` nodes are up, every
instance becomes the primary of a pair, its secondary on the next node. When
a worker fails (FAILED notice, with its commit record) or a node fails (missed
beats), each pair it served as primary goes to its secondary, which takes
the pair over (replaying what was not released), and each pair that lost its
secondary gets a new one on another node; when instances come back they
become secondaries where one is missing. Every change is pushed as
``set_routes`` with a new epoch (above any epoch a node reports) to every
live node, so the switch stops sending to a failed instance within a
heartbeat timeout (a FAILED notice: at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import zmq

from deft.runtime import wire
from deft.runtime.control import ControlServer
from deft.runtime.controller.autoscale import AutoscaleConfig, Autoscaler, pick_buckets
from deft.runtime.controller.leaselink import LeaseKeeper
from deft.runtime.controller.view import ClusterView
from deft.runtime.errors import ConfigError, DeftError, WireError
from deft.runtime.params import Params
from deft.runtime.procs.common import StopFlag, boost_priority, setup_logging
from deft.runtime.security import keys_from_config, load_keys
from deft.runtime.sockets import close_context, make_socket, readable, use_keys
from deft.runtime.waitset import WaitSet


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    source: str
    control: str
    heartbeats: str
    heartbeat_ms: int
    miss_limit: int
    fresh_grace_ms: int
    manage_routes: bool
    expect_nodes: int
    metrics: str = ""          # http://HOST:PORT of the Prometheus endpoint ("" = none)
    autoscale: AutoscaleConfig = AutoscaleConfig()
    id: str = ""               # "" = its control endpoint
    peers: tuple[str, ...] = ()
    witnesses: tuple[str, ...] = ()
    lease_ms: int = 500
    standby: bool = False
    keys: str = ""             # [security] keys: the CURVE key directory ("" = plain sockets)
    rebalance_after_ms: int = 0   # 0: rebalance only on request


def load_controller_config(path: str | Path) -> ControllerConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"controller", "security"})
    if unknown:
        raise ConfigError(f"{path}: [{unknown[0]}]: unknown section (known: controller, security)")
    p = Params(raw.get("controller", {}), str(path), "controller")
    cfg = ControllerConfig(
        source=str(path),
        control=p.url("control", ("tcp", "ipc"), "tcp://127.0.0.1:7000"),
        heartbeats=p.url("heartbeats", ("tcp", "ipc"), "tcp://127.0.0.1:7001"),
        heartbeat_ms=p.int("heartbeat_ms", 10, min=1, max=10_000),
        miss_limit=p.int("miss_limit", 5, min=1, max=1000),
        fresh_grace_ms=p.int("fresh_grace_ms", 500, min=0, max=600_000),
        manage_routes=p.bool("manage_routes", True),
        expect_nodes=p.int("expect_nodes", 1, min=1, max=1000),
        metrics=p.url("metrics", ("http",)) if p.str("metrics", "") else "",
        autoscale=AutoscaleConfig(
            enabled=p.bool("autoscale", False), high=p.float("autoscale_high", 0.7, min=0.05, max=1.0),
            dwell_ms=p.float("autoscale_dwell_ms", 2000.0, min=0.0, max=3_600_000.0),
            cooldown_ms=p.float("autoscale_cooldown_ms", 10_000.0, min=0.0, max=3_600_000.0),
            min_gain=p.float("autoscale_min_gain", 0.2, min=0.0, max=1.0)),
        id=p.str("id", ""), peers=p.urls("peers", ("tcp", "ipc")), witnesses=p.urls("witnesses", ("tcp", "ipc")),
        lease_ms=p.int("lease_ms", 500, min=20, max=60_000), standby=p.bool("standby", False),
        keys=keys_from_config(raw, str(path)),
        rebalance_after_ms=p.int("rebalance_after_ms", 0, min=0, max=3_600_000),
    )
    p.check_unknown()
    if cfg.peers and not cfg.witnesses:
        raise p.error("witnesses", "controllers with peers need witness nodes (their control endpoints) to "
                      "agree which one is active: two controllers alone cannot outvote each other")
    if cfg.keys and not cfg.id:
        raise p.error("id", "is required with [security] keys: it names this controller's key in members/")
    if cfg.control in cfg.peers:
        raise p.error("peers", f"lists this controller's own control endpoint {cfg.control}")
    return cfg


_T0 = time.monotonic_ns()


def now_ms() -> float:
    """Milliseconds since the controller started (event times read as such)."""
    return (time.monotonic_ns() - _T0) / 1e6


class Controller:
    def __init__(self, cfg: ControllerConfig, stop, log: logging.Logger):
        self.cfg = cfg
        self.stop = stop
        self.log = log
        self.view = ClusterView(cfg.heartbeat_ms, cfg.miss_limit)
        self.counters = {"heartbeats": 0, "failure_notices": 0, "bad_frames": 0, "route_pushes": 0,
                         "route_push_failures": 0}
        self.placed: tuple = ()      # the membership the current routes were pushed to
        self.routes_epoch = 0
        self.routes_due = False
        self.next_push_ms = 0.0
        # the assignment is looked at again when the view changed, a request came, or LOOK_EVERY_MS passed
        # (its grace timers), and always until placed (take_charge starts unplaced); per beat it cost a
        # fifth of an idle controller's CPU
        self.look_now, self.looked_at, self.next_look_ms = True, -1, 0.0
        from deft.runtime.controller.placement import Assignment

        self.assignment = Assignment(0)  # placed once expect_nodes nodes are up
        self.handled_nodes: set[str] = set()
        self.handled_instances: set[str] = set()
        self.decisions: dict[str, dict[int, int]] = {}  # instance id -> commit record from its FAILED notice
        from deft.runtime.controller.operations import Operations

        self.operations = Operations(self, self.freeze_pair, log, ask=self.ask_node, clock=now_ms)
        self.autoscaler = Autoscaler(cfg.autoscale)
        self.next_autoscale_ms = 0.0
        # rebalance_after_ms: instances that failed (until they can take roles again), and when the
        # rebalance their return makes due is
        self.failed_seen: set[tuple[str, int]] = set()
        self.rebalance_due_ms: float | None = None
        # the lease (lease.py): active while a majority of the voters (itself, its peers, the witness
        # nodes) grant it; one incarnation is one holder, so a restarted controller is a new one
        self.holder = f"{cfg.id or cfg.control}#{os.getpid()}"
        self.is_active = False
        self.active_since: float | None = None   # wall clock, for status
        self.zctx = zmq.Context()
        try:
            self.sub = make_socket(self.zctx, zmq.SUB, bind=cfg.heartbeats)
            self.sub.subscribe(b"")
            handlers = {"fail": self.fail, "rebalance": self.rebalance, "drain": self.drain,
                        "undrain": self.undrain, "move": self.move, "operation": self.operation}
            self.control = ControlServer(self.zctx, cfg.control,
                                         {"status": self.status, "lease": self.on_lease,
                                          **{cmd: self.when_active(h) for cmd, h in handlers.items()}}, log)
        except zmq.ZMQError as exc:
            self.zctx.destroy(linger=0)
            raise DeftError(f"{cfg.source}: [controller] cannot bind: {exc}") from None
        self.started = time.time()
        self.started_ms = now_ms()
        # (a standby lets the others go first)
        self.lease = LeaseKeeper(self.zctx, self.holder, cfg.control, list(cfg.peers), list(cfg.witnesses),
                                 cfg.lease_ms, now_ms() + (cfg.lease_ms if cfg.standby else 0.0), now_ms)

    # -- the lease (lease.py, leaselink.py) --------------------------------------------------------
    def on_lease(self, request: dict) -> dict:
        """A peer controller's lease request: this controller votes too."""
        return self.lease.vote(request)

    def check_role(self, now: float) -> None:
        """Take charge when the lease is ours, step down when it lapsed."""
        active = self.lease.active()
        if active and not self.is_active:
            self.take_charge(now)
        elif not active and self.is_active:
            self.is_active = False
            self.counters["stepped_down"] = self.counters.get("stepped_down", 0) + 1
            self.log.error("lost the controller lease (term %d): standing by", self.lease.term)
            self.view.record(now, "controller_standby", term=self.lease.term)

    def take_charge(self, now: float) -> None:
        """Active from now on: everything a previous active one decided is read back from the nodes'
        route sets (``recover``), as a restarted controller does; nothing of an earlier term is kept."""
        from deft.runtime.controller.operations import Operations
        from deft.runtime.controller.placement import Assignment

        self.is_active, self.active_since = True, time.time()
        self.assignment, self.placed, self.routes_due, self.next_push_ms = Assignment(0), (), False, 0.0
        self.recovery_done = False
        self.handled_nodes.clear()
        self.handled_instances.clear()
        self.operations = Operations(self, self.freeze_pair, self.log, ask=self.ask_node, clock=now_ms)
        self.log.warning("active controller now (lease term %d: %s)", self.lease.term, self.lease.status())
        self.view.record(now, "controller_active", term=self.lease.term, holder=self.holder)

    def when_active(self, handler):
        """A request only the active controller serves; a standby names the active one."""
        def serve(request: dict) -> dict:
            if self.is_active:
                return handler(request)
            holder, control = self.known_active()
            if control:
                return {"ok": False, "error": f"standby controller: the active one is {holder} at {control}",
                        "active": control}
            return {"ok": False, "error": f"no active controller yet (this one, {self.holder}, asks for the "
                    f"lease at term {self.lease.term})"}
        return serve

    def known_active(self) -> tuple[str | None, str]:
        """(holder, control endpoint) of the active controller as far as this one knows."""
        return (self.holder, self.cfg.control) if self.is_active else self.lease.known_active()

    def lease_status(self) -> dict:
        holder, control = self.known_active()
        return {"id": self.cfg.id or self.cfg.control, "holder": self.holder,
                "role": "active" if self.is_active else "standby", "term": self.lease.term,
                "active_since": self.active_since if self.is_active else None,
                "active": {"holder": holder, "control": control}, "lease": self.lease.status()}

    def status(self, request: dict) -> dict:
        st = self._status()
        moving = self.operations.moving_pairs()
        for p in st["pairs"]:
            p["moving"] = p["pair"] in moving
        return st

    def _status(self) -> dict:
        return {"controller": {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
                               "heartbeat_ms": self.cfg.heartbeat_ms, "miss_limit": self.cfg.miss_limit,
                               "counters": {**self.counters, "bad_requests": self.control.bad_requests},
                               # event times are ms after this monotonic instant (CLOCK_MONOTONIC is
                               # system-wide: a local tool can line them up with its own clock)
                               "t0_monotonic_ns": _T0, **self.lease_status()},
                **self.view.status(now_ms()), **self.operations.status(), "autoscale": self.autoscaler.status()}

    # -- planned operations (operations.py) ---------------------------------------------------------
    def rebalance(self, request: dict) -> dict:
        """Spread primaries, then secondaries, evenly over the live nodes that are not draining."""
        if not self.assignment.placed:
            raise ValueError("no pairs placed yet")
        running = self.operations.current
        if running is not None and running.kind == "rebalance":   # one started by itself: the same ask
            return running.report()
        return self.operations.start("rebalance", None, now_ms()).report()

    def drain(self, request: dict) -> dict:
        """Move every role off ``node`` (it takes none until ``undrain``)."""
        node = request.get("node")
        if node not in self.view.nodes:
            raise ValueError(f"no node {node!r} (known: {', '.join(sorted(self.view.nodes)) or 'none'})")
        if not self.assignment.placed:
            raise ValueError("no pairs placed yet")
        return self.operations.start("drain", node, now_ms()).report()

    def move(self, request: dict) -> dict:
        """``{"cmd": "move", "buckets": [b, ...], "to_pair": P}``: move those buckets' flows to pair P."""
        if not self.assignment.placed:
            raise ValueError("no pairs placed yet")
        n_buckets, n_pairs = len(self.assignment.buckets), len(self.assignment.pairs)
        buckets, to_pair = request.get("buckets"), request.get("to_pair")
        if not isinstance(buckets, list) or not buckets or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < n_buckets for b in buckets):
            raise ValueError(f"buckets must be a non-empty list of bucket numbers 0..{n_buckets - 1}")
        if not isinstance(to_pair, int) or isinstance(to_pair, bool) or not 0 <= to_pair < n_pairs:
            raise ValueError(f"to_pair must be a pair number 0..{n_pairs - 1}, got {to_pair!r}")
        return self.operations.start("move", None, now_ms(), buckets=buckets, to_pair=to_pair).report()

    def autoscale(self, now: float) -> None:
        """The autoscaler's look at the load per pair (``autoscale.py``); a move if it asks for one."""
        if not self.assignment.placed:
            return
        busy = {k: self.view.load.pair_load(k, f"{p.primary[0]}/nf{p.primary[1]}")["busy"]
                for k, p in enumerate(self.assignment.pairs) if p.primary is not None}
        plan = self.autoscaler.tick(now, busy, self.operations.current is not None)
        if plan is None:
            return
        rates: dict[int, float] = {}
        for node in self.view.nodes.values():   # the ingress nodes know each bucket's packets lately
            reply = self.ask_node(node.id, 0, {"cmd": "bucket_load"}) if node.state == "up" else None
            for b, r in ((reply or {}).get("rates") or {}).items():
                rates[int(b)] = rates.get(int(b), 0.0) + float(r)
        own = [b for b, p in enumerate(self.assignment.buckets) if p == plan.source]
        buckets = pick_buckets(plan, own, rates)
        if not buckets:
            return
        op = self.operations.start("move", None, now, buckets=buckets, to_pair=plan.to)
        op.origin = "autoscale"
        self.autoscaler.started(now, plan, buckets, busy)
        self.log.info("autoscale: pair %d busy %.2f, pair %d %.2f: moving %d of its %d buckets (operation %d)",
                      plan.source, busy[plan.source], plan.to, busy[plan.to], len(buckets), len(own), op.id)

    def ask_node(self, node_id: str, instance: int, request: dict) -> dict | None:
        """A request to ``node_id``'s supervisor (None: not up, or no answer within 500 ms)."""
        from deft.runtime.control import NoAnswer, query

        node = self.view.nodes.get(node_id)
        if node is None or node.state != "up" or not self.lease.active():
            return None
        try:
            return query(node.control, self.fenced(request), 500)
        except NoAnswer:
            return None

    def fenced(self, request: dict) -> dict:
        """A request to a node with this controller's lease term: a node that obeyed a newer term refuses it."""
        return {**request, "term": self.lease.term, "controller": self.holder}

    def undrain(self, request: dict) -> dict:
        node = request.get("node")
        if not isinstance(node, str):
            raise ValueError("node must be a node id")
        self.operations.undrain(node)
        return {"draining": sorted(self.operations.draining)}

    def operation(self, request: dict) -> dict:
        op = self.operations.get(request.get("id"))
        if op is None:
            raise ValueError(f"no operation {request.get('id')!r}")
        return op.report()

    def freeze_pair(self, node_id: str, instance: int, pair: int) -> dict | None:
        """Ask ``node_id``'s supervisor to freeze ``pair`` on ``instance`` (None: no answer)."""
        return self.ask_node(node_id, instance, {"cmd": "freeze", "pair": pair, "instance": instance,
                                                 "epoch": self.routes_epoch})

    def push_routes_now(self) -> None:
        self.next_push_ms = 0.0
        self.maybe_push_routes()

    def fail(self, request: dict) -> dict:
        """Drill: have the owning supervisor SIGKILL an NF worker or itself."""
        from deft.runtime.control import NoAnswer, query

        what, ident = request.get("what"), request.get("id")
        if what == "node":
            node, target = self.view.nodes.get(ident), "node"
        elif what == "nf" and isinstance(ident, str) and "/" in ident:
            node_id, target = ident.split("/", 1)
            node = self.view.nodes.get(node_id)
        else:
            raise ValueError('expected {"what": "nf", "id": "<node>/nf<i>"} or {"what": "node", "id": "<node>"}')
        if node is None or node.state != "up":
            raise ValueError(f"no live node for {ident!r}")
        try:
            reply = query(node.control, self.fenced({"cmd": "kill", "target": target}), 1000)
        except NoAnswer as exc:
            raise ValueError(str(exc)) from None
        if not reply.get("ok"):
            raise ValueError(reply.get("error"))
        self.log.warning("drill: killed %s %s (pid %s)", what, ident, reply["pid"])
        return {"killed": ident, "pid": reply["pid"]}

    metrics_status: dict | None = None

    def metric_families(self):
        """Prometheus families from the last status copy (README, "Metrics")."""
        from prometheus_client.core import GaugeMetricFamily

        from deft.runtime.metrics import counter_families

        st = self.metrics_status
        if st is None:
            return
        yield from counter_families("deft_controller", [({}, st["controller"]["counters"])], [])
        up = GaugeMetricFamily("deft_node_up", "1 if the node is up", labels=["node"])
        for n in st["nodes"]:
            up.add_metric([n["id"]], float(n["state"] == "up"))
        yield up
        inst = {name: GaugeMetricFamily(f"deft_instance_{name}", doc, labels=["instance"]) for name, doc in (
            ("up", "1 if the instance is up and ready"), ("busy", "fraction of the time its loop worked"),
            ("pps", "packets per second it processed as a primary"), ("input_ring", "packets in its input ring"))}
        for i in st["instances"]:
            inst["up"].add_metric([i["id"]], float(i["state"] == "up" and bool(i["ready"])))
            for name in ("busy", "pps", "input_ring"):
                inst[name].add_metric([i["id"]], float(i["load"][name]))
        yield from inst.values()
        pair = {name: GaugeMetricFamily(f"deft_pair_{name}", doc, labels=["pair"]) for name, doc in (
            ("pps", "packets per second"), ("busy", "its share of its primary's busy time"),
            ("input_ring", "packets in its primary's input ring"), ("buckets", "buckets routed to it"),
            ("moving", "1 while a bucket move takes buckets from it or gives it some"))}
        for p in st["pairs"]:
            k = str(p["pair"])
            for name in ("pps", "busy", "input_ring"):
                pair[name].add_metric([k], float(p["load"][name]))
            pair["buckets"].add_metric([k], float(p["buckets"]))
            pair["moving"].add_metric([k], float(p["moving"]))
        yield from pair.values()
        running = GaugeMetricFamily("deft_operations_running", "planned operations running (0 or 1)")
        running.add_metric([], float(any(op["state"] == "running" for op in st["operations"])))
        yield running
        auto = st["autoscale"]
        wanted = GaugeMetricFamily("deft_autoscale_node_wanted", "1 if every pair is over the autoscaler's "
                                   "threshold: no pair to move load to, a node would help")
        wanted.add_metric([], float(auto["node_wanted"]))
        yield wanted
        moves = GaugeMetricFamily("deft_autoscale_moves", "bucket moves the autoscaler started")
        moves.add_metric([], float(auto["moves"]))
        yield moves

    def usable(self) -> list[tuple[str, int]]:
        """Instances that can take a role now: up, ready, on a live node with a fabric."""
        draining = self.operations.draining
        return sorted((node.id, info.index) for node in self.view.nodes.values()
                      if node.state == "up" and node.fabric and node.id not in draining
                      for info in node.instances.values() if info.state == "up" and info.ready)

    def update_assignment(self) -> bool:
        """Apply what happened since the last look (failures, returns, joins); True if the routes must change."""
        members = tuple(m for m in self.view.membership() if m[1])
        if not self.assignment.placed:
            recovered = self.recover()
            if recovered or recovered is None:
                return bool(recovered)
            if len(members) < self.cfg.expect_nodes:
                return False
            from deft.runtime.controller.placement import Assignment

            self.assignment = Assignment(members[0][3], fresh_grace_ms=self.cfg.fresh_grace_ms)
            self.assignment.place({m[0]: m[2] for m in members})
            return True
        usable = self.usable()
        changed = False
        for node in sorted(self.view.nodes.values(), key=lambda n: n.id):
            if node.state == "failed":
                if node.id not in self.handled_nodes:
                    self.handled_nodes.add(node.id)
                    self.failed_seen.update((node.id, info.index) for info in node.instances.values())
                    silent = self.view.fdu.members[node.id].last_ms if node.id in self.view.fdu.members else None
                    changed |= bool(self.assignment.node_failed(node.id, usable, now_ms(), silent))
                continue
            self.handled_nodes.discard(node.id)
            for info in node.instances.values():
                if info.state == "failed" and info.id not in self.handled_instances:
                    self.handled_instances.add(info.id)
                    self.failed_seen.add((node.id, info.index))
                    decisions = self.decisions.pop(info.id, None)  # None: no FAILED notice came
                    changed |= bool(self.assignment.instance_failed((node.id, info.index), decisions, usable))
                elif info.state == "up":
                    self.handled_instances.discard(info.id)
        changed |= bool(self.assignment.fill(usable, now_ms(), self.view.survivors()))
        self.note_back(usable, now_ms())
        return changed or members != self.placed

    def note_back(self, usable: list[tuple[str, int]], now: float) -> None:
        """With ``rebalance_after_ms``, a rebalance is due that long after an instance that failed
        (``failed_seen``, kept as ``update_assignment`` handles failures) can take roles again (a
        restarted worker, a node back): a failover leaves the dead one's pairs on the workers of their
        secondaries, and nothing else moves them back, so after a worker's restart one worker serves
        two pairs' traffic while the restarted one stands by (at 6 kpps on examples/cluster its
        backlog grew to 800 packets in 3 s). A node that joins or is undrained waits for the
        operator's ``rebalance``, as before (the README's scaling steps)."""
        back = self.failed_seen & set(usable)
        if back:
            self.failed_seen -= back
            if self.cfg.rebalance_after_ms > 0:
                self.rebalance_due_ms = now + self.cfg.rebalance_after_ms

    def maybe_rebalance(self, now: float) -> None:
        """Start the rebalance that ``note_back`` made due, once nothing else runs and the routes are
        pushed; none if the pairs are spread already."""
        if self.rebalance_due_ms is None or now < self.rebalance_due_ms:
            return
        if self.operations.current is not None or self.routes_due:
            self.rebalance_due_ms = now + LOOK_EVERY_MS   # after what runs now
            return
        self.rebalance_due_ms = None
        from deft.runtime.controller.moves import rebalance_step

        if rebalance_step(self.assignment, self.usable()) is None:
            return
        op = self.operations.start("rebalance", None, now)
        self.log.warning("operation %d: rebalance, %.0f ms after an instance could take roles again", op.id,
                         self.cfg.rebalance_after_ms)
        self.view.record(now, "rebalance_started", operation=op.id, why="an instance can take roles again")

    recovering_since: float | None = None
    recovery_done = False
    recover_again_ms = 0.0

    def recover(self) -> bool | None:
        """A controller (re)started beside nodes that already hold routes takes its assignment back
        from them instead of placing afresh (which would undo every failover and move since, and
        restart the pairs' state): the newest route set any live node holds, with the drained nodes
        and the running operation that ride on it. It waits ``RECOVER_BEATS`` heartbeats after the
        first node beat, so every live node is heard from; a node the route set uses that has not beaten
        by then, nor within ``silent_grace_ms`` of this controller's start, is taken as failed (its pairs
        fail over, as for a node that died while no controller watched). True: recovered; False:
        nothing to take back (a new cluster: place it); None: wait."""
        if self.recovery_done:
            return False
        if not self.view.nodes:
            return None
        now = now_ms()
        if self.recovering_since is None:
            self.recovering_since = now
        if now - self.recovering_since < max(100.0, RECOVER_BEATS * self.cfg.heartbeat_ms) \
                or now < self.recover_again_ms:
            return None
        from deft.runtime.control import query_all
        from deft.runtime.controller.placement import Assignment

        up = {n.id: n.control for n in self.view.nodes.values() if n.state == "up"}
        replies = query_all(up, {"cmd": "get_routes"}, 500)
        held = [r["routes"] for r in replies.values() if r and r.get("ok") and r.get("routes")]
        if not held:
            self.recovery_done = True
            return False
        newest = max(held, key=lambda r: r["epoch"])
        try:
            assignment = Assignment.from_request(newest, self.cfg.fresh_grace_ms)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            self.recovery_done = True
            self.log.error("cannot take the assignment back from the nodes' routes (%s); placing afresh", exc)
            return False
        if assignment.nodes_used() - set(up) and now < self.started_ms + self.silent_grace_ms():
            # A node of the route set not heard from yet may only not have reconnected: ZeroMQ retries a
            # connection to a restarted controller every 100 ms, so one node's first beat can come 100 ms
            # after another's (seen: two live nodes taken as failed 110 ms after the first beat, every
            # pair failed over and back, 86 NAT mappings lost). Ask again a beat later
            self.recover_again_ms = now + self.cfg.heartbeat_ms
            return None
        self.recovery_done = True
        self.assignment = assignment
        self.routes_epoch = max(self.routes_epoch, int(newest["epoch"]))
        usable = self.usable()
        for node in sorted(assignment.nodes_used() - set(up)):
            self.log.warning("node %s is in the routes but silent since the controller started: failed", node)
            self.handled_nodes.add(node)
            assignment.node_failed(node, usable, now, None)
        op = self.operations.recover(newest.get("controller_state") or {}, now)
        self.log.warning("took the assignment back from the nodes' routes (epoch %d: %d pairs over %s)%s",
                         newest["epoch"], len(assignment.pairs), ", ".join(sorted(assignment.nodes_used())),
                         f"; operation {op.kind} started again" if op else "")
        self.view.record(now, "assignment_recovered", epoch=newest["epoch"])
        return True

    def look_due(self, now: float) -> bool:
        """Whether the assignment must be looked at now (and, if so, the look is recorded)."""
        if self.assignment.placed and not (self.look_now or self.view.changes != self.looked_at
                                           or now >= self.next_look_ms):
            return False
        self.look_now, self.looked_at, self.next_look_ms = False, self.view.changes, now + LOOK_EVERY_MS
        return True

    def silent_grace_ms(self) -> float:
        """How long after its start a controller waits for a node of the routes it took back before it
        takes it as failed: ZeroMQ's reconnect interval (100 ms by default), then the detection time."""
        return ZMQ_RECONNECT_MS + self.cfg.heartbeat_ms * self.cfg.miss_limit

    def maybe_push_routes(self) -> None:
        """Push a new route set when the assignment changed (or the last push failed), with a new epoch."""
        if self.look_due(now_ms()) and self.update_assignment():
            self.routes_due = True
        if not self.routes_due or now_ms() < self.next_push_ms:
            return
        from deft.runtime.control import query_all

        if not self.lease.active():   # lapsed since the loop looked: the next look steps down
            return
        members = tuple(m for m in self.view.membership() if m[1])
        self.routes_epoch = max(self.routes_epoch, self.view.max_routes_epoch()) + 1
        endpoints = {n.id: (n.fabric, n.replication, n.copies) for n in self.view.nodes.values()}
        request = self.assignment.request(self.routes_epoch, endpoints, {m[0] for m in members})
        request["controller_state"] = self.operations.persistent()   # a restarted controller reads it back
        request = self.fenced(request)
        # to every member at once: a stalled node costs one timeout, and other nodes' failures are seen
        # sooner (sent one by one, a push blocked the loop 500 ms per silent node)
        replies = query_all({m[0]: self.view.nodes[m[0]].control for m in members}, request, 500)
        ok = True
        for node_id, reply in replies.items():
            ok &= bool(reply and reply.get("ok"))
            if reply is not None and not reply.get("ok"):
                self.log.warning("node %s refused routes epoch %d: %s", node_id, self.routes_epoch,
                                 reply.get("error"))
        self.counters["route_pushes"] += 1
        self.view.record(now_ms(), "routes_pushed", epoch=self.routes_epoch, nodes=[m[0] for m in members],
                         ok=ok, takeovers=[k for k, p in enumerate(request["pairs"])
                                           if p[4] != -2 and p[5] == self.routes_epoch])
        self.view.set_placement(request)
        if ok:
            self.placed, self.routes_due = members, False
        else:
            self.counters["route_push_failures"] += 1
            self.next_push_ms = now_ms() + 100  # try again soon, with a newer epoch

    liveness = None

    def on_message(self, frames: list[bytes]) -> None:
        """A beat or a failure notice; anything malformed in it is counted and dropped whole."""
        try:
            kind, header = wire.decode(frames)
            self._on_message(kind, header)
        except (WireError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self.counters["bad_frames"] += 1
            if self.counters["bad_frames"] <= 10:
                self.log.warning("ignored a bad frame on the heartbeat socket: %s", exc)

    def _on_message(self, kind: bytes, header: dict) -> None:
        if kind == wire.HEARTBEAT:
            self.counters["heartbeats"] += 1
            event = self.view.on_heartbeat(header, now_ms())
            if event is not None:   # failed by silence, beating again: what made it
                self.log.warning("node %s was failed but beats again (its pid unchanged): silent %s ms, %s beats "
                                 "missing, this one sent %s ms late by its clock", event["node"], event["silent_ms"],
                                 event["beats_missing"], event["late_ms"])
            fence = header.get("controller_fence")   # the newest controller this node obeys
            if isinstance(fence, list) and len(fence) == 2 and isinstance(fence[0], int) \
                    and isinstance(fence[1], (str, type(None))):
                self.lease.deposed_by(fence[0], fence[1])
        else:
            self.counters["failure_notices"] += 1
            if "decisions" in header:
                self.decisions[f"{header['node']}/{header['process']}"] = {
                    int(p): b for p, b in header["decisions"].items()}
            self.view.on_failed(header, now_ms())
            self.log.warning("%s/%s (pid %s) failed, exit %s", header["node"], header["process"], header["pid"],
                             header["exit"])

    def watch_nodes(self, waits: WaitSet) -> None:
        """A monitored connection to every live node's control socket (new nodes, moved endpoints)."""
        for node in self.view.nodes.values():
            if node.state == "up":
                monitor, old = self.liveness.watch(node.id, node.control)
                if old is not None:
                    waits.remove(old)
                if monitor is not None:
                    waits.add(monitor)
        self.liveness.close_retired()

    def on_lost(self, ready) -> None:
        for node in self.liveness.events(ready):
            if self.view.on_disconnect(node, now_ms()):
                self.log.warning("node %s failed (its control connection closed)", node)

    def run(self) -> None:
        from deft.runtime.controller.liveness import LivenessWatch

        self.liveness = LivenessWatch(self.zctx)
        metrics = None
        if self.cfg.metrics:
            from deft.runtime.metrics import MetricsServer

            metrics = MetricsServer(self.cfg.metrics, self.metric_families, self.log,
                                    f"{self.cfg.source}: [controller] metrics")
        next_metrics = 0.0
        waits = WaitSet()   # zmq.Poller asked every socket twice per sleep: four system calls each
        waits.add(self.sub)
        waits.add(self.control.sock)
        own = {self.sub, self.control.sock}
        next_tick = now_ms()
        watched_at = -1
        self.log.info("controller up: control %s, heartbeats %s (%d ms x %d)", self.cfg.control,
                      self.cfg.heartbeats, self.cfg.heartbeat_ms, self.cfg.miss_limit)
        try:
            while not self.stop:
                # rounded up: a timeout rounded down to 0 would spin until the tick
                # at least every lease_ms / 4: the role follows the lease
                wait = min(self.cfg.heartbeat_ms, self.cfg.lease_ms / 4, next_tick - now_ms())
                events, _ = waits.wait(max(0, math.ceil(wait)))
                if self.sub in events:
                    for _ in range(1000):  # drain what is there, then look at the rest
                        if not readable(self.sub):
                            break
                        self.on_message(self.sub.recv_multipart(zmq.NOBLOCK))
                if self.control.sock in events:
                    self.control.handle_one()
                    self.look_now = True   # a drain, an undrain, a failure reported by an operator
                if any(sock not in own for sock in events):
                    self.on_lost(events)
                self.check_role(now_ms())
                if self.recovering_since is None and self.view.nodes:   # a standby's view is warm at take-over
                    self.recovering_since = now_ms()
                if self.view.changes != watched_at:   # a node joined, restarted (a new endpoint) or failed
                    watched_at = self.view.changes
                    self.watch_nodes(waits)
                if now_ms() >= next_tick:
                    for node in self.view.tick(now_ms()):
                        self.log.warning("node %s failed (no heartbeat for %d x %d ms)", node,
                                         self.cfg.miss_limit, self.cfg.heartbeat_ms)
                    next_tick = now_ms() + self.cfg.heartbeat_ms
                if self.cfg.manage_routes and self.is_active:
                    self.maybe_push_routes()
                    self.operations.advance(now_ms())
                    self.maybe_rebalance(now_ms())
                    if now_ms() >= self.next_autoscale_ms:
                        self.next_autoscale_ms = now_ms() + AUTOSCALE_EVERY_MS
                        self.autoscale(now_ms())
                if metrics is not None and now_ms() >= next_metrics:   # scrapes read this copy (their thread)
                    self.metrics_status, next_metrics = self.status({}), now_ms() + METRICS_EVERY_MS
        finally:
            if metrics is not None:
                metrics.close()
            self.close()

    def close(self) -> None:
        if self.liveness is not None:
            self.liveness.close()
        self.lease.close()
        self.sub.close()
        self.control.close()
        close_context(self.zctx)


METRICS_EVERY_MS = 250.0
RECOVER_BEATS = 4   # a restarted controller hears every live node (4 beats) before it takes the routes back
ZMQ_RECONNECT_MS = 100.0   # ZMQ_RECONNECT_IVL's default: how often a node's beat socket tries a dead controller
AUTOSCALE_EVERY_MS = 250.0
LOOK_EVERY_MS = 50.0   # the assignment's grace timers (placement.py) are checked this often at least


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-controller", description="Run the DEFT controller.")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_controller_config(args.config)
    except DeftError as exc:
        print(f"deft-controller: error: {exc}", file=sys.stderr)
        return 2
    log = setup_logging("controller")
    boost_priority()
    try:
        if cfg.keys:
            use_keys(load_keys(cfg.keys, cfg.id))
        Controller(cfg, StopFlag(), log).run()
    except DeftError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
