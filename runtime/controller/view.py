"""The controller's view of the cluster, built from heartbeats and failure notices.

Pure: messages and time (ms) in, state and events out. The failure detection
unit (``FailureDetector``) decides when a silent node has failed; a FAILED
notice from a node's supervisor marks one of its processes failed at once.
Events (joined, failed, recovered, restarted) are kept, newest last, with the
time from failure to recovery where there was one.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from deft.runtime.controller.detector import FailureDetector
from deft.runtime.controller.load import LoadMeter

EVENTS_KEPT = 200


@dataclasses.dataclass
class InstanceInfo:
    id: str
    node: str
    index: int
    pid: int | None
    state: str = "up"            # up | failed
    restarts: int = 0
    failed_at_ms: float | None = None
    pid_at_failure: int | None = None  # the process marked failed: back with this pid = it never died
    ready: bool = False
    lag: int = 0                 # replication: batches waiting for the secondary's vote or for release
    role: str = "primary"        # of its pair(s); secondary (of some, primary of none); spare. Until the
                                 # controller places pairs each node serves its own: all primaries
    peer: str | None = None      # the instance holding the secondary of its (first) pair
    secondary_of: str | None = None  # the primary of the (first) pair this one is the secondary of
    primary_pairs: list = dataclasses.field(default_factory=list)
    secondary_pairs: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class NodeInfo:
    id: str
    pid: int
    control: str
    fabric: str = ""
    buckets: int = 0
    replication: str = ""
    copies: str = ""
    routes_epoch: int = 0
    state: str = "up"            # up | failed
    seq: int = 0
    beats: int = 0
    instances: dict[str, InstanceInfo] = dataclasses.field(default_factory=dict)


class ClusterView:
    def __init__(self, heartbeat_ms: float, miss_limit: int):
        self.fdu = FailureDetector(heartbeat_ms, miss_limit)
        self.nodes: dict[str, NodeInfo] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.false_suspicions = 0
        self.pairs: list[dict[str, Any]] = []  # from the last route set pushed
        self.load = LoadMeter()                 # per instance and pair, from the beats' counters
        # bumped by everything placement can depend on (an event; an instance new, restarted, or ready or
        # not): the controller looks at its assignment again only then (or on a timer), not per beat
        self.changes = 0

    def _event(self, now_ms: float, what: str, **details: Any) -> dict[str, Any]:
        event = {"t_ms": round(now_ms, 3), "event": what, **details}
        self.events.append(event)
        self.changes += 1
        return event

    record = _event  # the controller driver records its own actions (route pushes) beside the view's

    def on_heartbeat(self, hb: dict[str, Any], now_ms: float) -> dict[str, Any] | None:
        """Take a beat in; the ``node_recovered`` event if it ends a false suspicion, else None."""
        recovered = None
        heard = self.fdu.members.get(hb["node"])
        silent_ms = None if heard is None else round(now_ms - heard.last_ms, 1)
        news = self.fdu.observe(hb["node"], now_ms)
        node = self.nodes.get(hb["node"])
        if node is None or node.pid != hb["pid"]:
            if node is not None and node.pid != hb["pid"]:
                self._event(now_ms, "node_restarted", node=hb["node"], old_pid=node.pid, pid=hb["pid"])
            node = self.nodes[hb["node"]] = NodeInfo(hb["node"], hb["pid"], hb["control"], hb["fabric"],
                                                     hb["buckets"], hb["replication"], str(hb.get("copies", "")))
            if news == "joined":
                self._event(now_ms, "node_joined", node=node.id, pid=node.pid)
        elif news == "recovered":
            # same supervisor pid: it was never gone, only late (a false suspicion)
            # what made it: beats sent late (the node's own late_ms), beats lost on the way (a gap in
            # seq), or beats late on the way (neither)
            self.false_suspicions += 1
            late = hb.get("late_ms")
            recovered = self._event(now_ms, "node_recovered", node=node.id, silent_ms=silent_ms,
                        beats_missing=max(0, hb["seq"] - node.seq - 1),
                        late_ms=late if isinstance(late, (int, float)) else None)
        if hb["seq"] <= node.seq and news is None:
            return None  # a late or duplicated beat: nothing new in it
        node.state, node.seq, node.beats = "up", max(node.seq, hb["seq"]), node.beats + 1
        node.routes_epoch = max(node.routes_epoch, hb["routes_epoch"])
        for inst in hb["instances"]:
            self._update_instance(node, inst, now_ms)
        return recovered

    def _update_instance(self, node: NodeInfo, inst: dict[str, Any], now_ms: float) -> None:
        info = node.instances.get(inst["id"])
        if info is None:
            info = node.instances[inst["id"]] = InstanceInfo(inst["id"], node.id, inst["index"], inst["pid"])
            self.changes += 1
        if inst["alive"] and info.state == "failed":
            took = None if info.failed_at_ms is None else round(now_ms - info.failed_at_ms, 3)
            self._event(now_ms, "instance_recovered", instance=info.id, pid=inst["pid"], recovery_ms=took)
            info.state, info.failed_at_ms = "up", None
        elif not inst["alive"] and info.state == "up":
            self._mark_failed(info, now_ms, "reported dead by its node")
        ready = bool(inst.get("ready", inst["alive"]))
        if (info.pid, info.restarts, info.ready) != (inst["pid"], inst["restarts"], ready):
            self.changes += 1
        info.pid, info.restarts, info.ready = inst["pid"], inst["restarts"], ready
        info.lag = int(inst.get("lag", 0))
        self.load.observe(info.id, now_ms, inst)

    def survivors(self) -> frozenset[tuple[str, int]]:
        """Instances up again as the very process that was marked failed (a false suspicion): state intact."""
        return frozenset((n.id, i.index) for n in self.nodes.values() if n.state == "up"
                         for i in n.instances.values() if i.state == "up" and i.pid_at_failure is not None
                         and i.pid == i.pid_at_failure)

    def _mark_failed(self, info: InstanceInfo, now_ms: float, why: str) -> None:
        info.state, info.failed_at_ms, info.pid_at_failure = "failed", now_ms, info.pid
        self._event(now_ms, "instance_failed", instance=info.id, pid=info.pid, why=why)

    def on_failed(self, notice: dict[str, Any], now_ms: float) -> None:
        node = self.nodes.get(notice["node"])
        if node is None:
            return
        process = notice["process"]
        inst_id = f"{node.id}/{process}"
        info = node.instances.get(inst_id)
        if info is not None and info.state == "up":
            self._mark_failed(info, now_ms, f"exited with {notice['exit']}")
        elif info is None:
            self._event(now_ms, "process_failed", node=node.id, process=process, pid=notice["pid"],
                        exit=notice["exit"])

    def tick(self, now_ms: float) -> list[str]:
        """Declare silent nodes failed (with all their instances); return the nodes that just failed."""
        stalls = self.fdu.stalls
        failed = self.fdu.expired(now_ms)
        if self.fdu.stalls != stalls:   # every node silent at once: our stall, not theirs (detector.py)
            self._event(now_ms, "all_nodes_silent", nodes=sorted(n for n, m in self.fdu.members.items() if not m.failed))
        for name in failed:
            self._node_failed(name, now_ms, "no heartbeat")
        return failed

    def on_disconnect(self, name: str, now_ms: float) -> bool:
        """The controller's connection to the node's control socket closed: its supervisor is gone
        (the kernel closes a dead process's sockets), so the node fails now, not beats later.
        True if that is news. A node that is in fact alive beats again: a false suspicion."""
        if name not in self.nodes or not self.fdu.fail_now(name):
            return False
        self._node_failed(name, now_ms, "connection lost")
        return True

    def _node_failed(self, name: str, now_ms: float, why: str) -> None:
        node = self.nodes[name]
        node.state = "failed"
        self._event(now_ms, "node_failed", node=name, pid=node.pid, why=why,
                    silence_ms=round(self.fdu.silence_ms(name, now_ms), 3))
        for info in node.instances.values():
            if info.state == "up":
                self._mark_failed(info, now_ms, "its node failed")

    def status(self, now_ms: float) -> dict[str, Any]:
        nodes, instances = [], []
        for node in sorted(self.nodes.values(), key=lambda n: n.id):
            nodes.append({"id": node.id, "pid": node.pid, "state": node.state, "control": node.control,
                          "beats": node.beats, "silence_ms": round(self.fdu.silence_ms(node.id, now_ms), 3)})
            for info in sorted(node.instances.values(), key=lambda i: i.index):
                instances.append({"id": info.id, "node": info.node, "role": info.role, "peer": info.peer,
                                  "secondary_of": info.secondary_of, "pid": info.pid, "state": info.state,
                                  "ready": info.ready, "restarts": info.restarts, "replication_lag": info.lag,
                                  "primary_of_pairs": info.primary_pairs, "secondary_of_pairs": info.secondary_pairs,
                                  "load": self.load.instance_load(info.id)})
        pairs = [dict(p, load=self.load.pair_load(p["pair"], p["primary"])) for p in self.pairs]
        return {"nodes": nodes, "instances": instances, "pairs": pairs, "events": list(self.events),
                "false_suspicions": self.false_suspicions, "detector_stalls": self.fdu.stalls}


    def membership(self) -> tuple:
        """What placement depends on: the live nodes, their fabric endpoints and instance counts."""
        return tuple((n.id, n.fabric, len(n.instances), n.buckets, n.replication, n.copies)
                     for n in sorted(self.nodes.values(), key=lambda n: n.id) if n.state == "up")

    def max_routes_epoch(self) -> int:
        return max((n.routes_epoch for n in self.nodes.values()), default=0)

    def set_placement(self, request: dict[str, Any]) -> None:
        """Record, per instance, the pairs it serves and as what (status), from a set_routes request."""
        names = [n[0] for n in request["nodes"]]
        self.pairs = []
        for node in self.nodes.values():
            for info in node.instances.values():
                info.peer = info.secondary_of = None
                info.primary_pairs, info.secondary_pairs = [], []
        buckets = [0] * len(request["pairs"])
        for b in request.get("buckets", []):
            if 0 <= b < len(buckets):
                buckets[b] += 1
        for k, (pn, pi, sn, si, *rest) in enumerate(request["pairs"]):
            primary = f"{names[pn]}/nf{pi}"
            secondary = f"{names[sn]}/nf{si}" if sn >= 0 else None
            self.pairs.append({"pair": k, "primary": primary, "secondary": secondary,
                               "generation": rest[1] if rest else request.get("epoch"), "buckets": buckets[k]})
            p_info = self._instance(primary)
            s_info = self._instance(secondary) if secondary else None
            if p_info is not None:
                p_info.primary_pairs.append(k)
                if p_info.peer is None:
                    p_info.peer = secondary
            if s_info is not None:
                s_info.secondary_pairs.append(k)
                if s_info.secondary_of is None:
                    s_info.secondary_of = primary
        for node in self.nodes.values():
            for info in node.instances.values():
                info.role = "primary" if info.primary_pairs else "secondary" if info.secondary_pairs else "spare"

    def _instance(self, instance_id: str) -> InstanceInfo | None:
        node = self.nodes.get(instance_id.split("/")[0])
        return node.instances.get(instance_id) if node else None
