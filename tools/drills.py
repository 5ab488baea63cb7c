"""Failure drills on a LocalCluster, timed: kill a primary worker or a node, see the pair taken over.

    from deft.tools.drills import kill_primary_worker, kill_node, restart_node, wait_for, healthy
    from deft.tools.drills import start_traffic, traffic_report

Times are on CLOCK_MONOTONIC, which is system-wide on Linux, so the
controller's event times (``t0_monotonic_ns`` + ``t_ms``), the workers'
``takeover_release_ns`` counters and this process's clock line up:

  detected  the controller's failure event (a worker's FAILED notice, a node's
            last missed heartbeat)
  released  the first packet of a taken-over pair leaving its new primary

A ``Failover`` holds both, in ms after the SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from deft.tools.ctl import BUSY, NoAnswer, query
from deft.tools.localnode import LocalCluster, LocalNode


@dataclasses.dataclass(frozen=True)
class Failover:
    victim: str
    pairs: tuple[int, ...]
    detected_ms: float      # kill -> failure event at the controller
    released_ms: float      # kill -> first release of every taken-over pair (the last of them)

    @property
    def recovery_ms(self) -> float:
        """Failure detected -> traffic of the affected flows leaving again."""
        return self.released_ms - self.detected_ms


def start_traffic(cluster: LocalCluster, report: Path, flows: int, rate: int, duration: float,
                  *extra: str) -> subprocess.Popen:
    """The traffic generator against ``cluster`` (its ingress, back at its egress), report to ``report``."""
    return subprocess.Popen([sys.executable, "-m", "deft.tools.trafficgen", "--to", cluster.ingress,
                             "--listen", cluster.egress, "--json", str(report), "--quiet", "--flows", str(flows),
                             "--rate", str(rate), "--duration", str(duration), *extra])


def traffic_report(gen: subprocess.Popen, report: Path, timeout: float = 90) -> dict:
    """Wait for the generator (killed by PID if it outlives ``timeout``) and read its report."""
    try:
        if gen.wait(timeout) != 0:
            raise RuntimeError(f"trafficgen exited with {gen.returncode}")
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    return orjson.loads(Path(report).read_bytes())


def run_operation(cluster: LocalCluster, request: dict, timeout: float = 60.0) -> dict:
    """Start a planned operation on the controller (``rebalance``, ``drain``) and poll it until it
    ends or ``timeout`` passes, as ``deft-ctl ... --wait`` does; its last report (``state`` says how
    it ended; still ``running`` after the timeout); one that another operation holds up starts after
    it, as with ``--wait``. An error reply raises RuntimeError."""
    deadline = time.monotonic() + timeout
    while not (op := query(cluster.ctl.control, request, 3000)).get("ok"):
        if BUSY not in str(op.get("error")) or time.monotonic() >= deadline:
            raise RuntimeError(f"{request}: {op.get('error')}")
        time.sleep(0.05)
    while op["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
        op = query(cluster.ctl.control, {"cmd": "operation", "id": op["id"]}, 3000)
    return op


def healthy(st: dict) -> bool:
    """Every pair served by a live, ready primary and replicated to a live, ready secondary."""
    live = {i["id"] for i in st["instances"] if i["state"] == "up" and i.get("ready", True)}
    return bool(st["pairs"]) and all(p["primary"] in live and p["secondary"] in live for p in st["pairs"])


def wait_for(cluster: LocalCluster, predicate, timeout: float = 15.0) -> dict:
    """The controller's status once ``predicate(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = query(cluster.ctl.control, {"cmd": "status"}, 2000)
            if predicate(st):
                return st
        except NoAnswer:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not reach the expected state in time")
        time.sleep(0.02)


def node_of(cluster: LocalCluster, node_id: str) -> LocalNode:
    return next(n for n in cluster.nodes if n.node_id == node_id)


def _event_ns(st: dict, event: dict) -> int:
    return st["controller"]["t0_monotonic_ns"] + int(event["t_ms"] * 1e6)


def _first_release_ns(cluster: LocalCluster, instance: str, after_ns: int, timeout: float = 5.0) -> int:
    """When the pair ``instance`` took over after ``after_ns`` first released a packet."""
    node_id, nf = instance.split("/")
    index = int(nf[2:])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = node_of(cluster, node_id).status(2000)
        c = next(i for i in st["instances"] if i["index"] == index)["counters"]
        if c.get("takeover_ns", 0) > after_ns and c.get("takeover_release_ns", 0):
            return c["takeover_release_ns"]
        time.sleep(0.01)
    raise TimeoutError(f"{instance}: no release after its take-over")


def _timed(cluster: LocalCluster, victim: str, pid: int, moved: list[int], event: str, key: str) -> Failover:
    t_kill = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)  # directly: a drill through the controller adds its own round trips
    st = wait_for(cluster, lambda s: any(e["event"] == event and e[key] == victim and _event_ns(s, e) >= t_kill
                                         for e in s["events"]))
    detected = min(_event_ns(st, e) for e in st["events"]
                   if e["event"] == event and e[key] == victim and _event_ns(st, e) >= t_kill)

    def moved_off(s: dict) -> bool:
        return all(victim not in (p["primary"], p["primary"].split("/")[0]) for p in s["pairs"] if p["pair"] in moved)

    st = wait_for(cluster, moved_off)
    released = max(_first_release_ns(cluster, next(p["primary"] for p in st["pairs"] if p["pair"] == k), t_kill)
                   for k in moved)
    return Failover(victim, tuple(moved), (detected - t_kill) / 1e6, (released - t_kill) / 1e6)


def kill_primary_worker(cluster: LocalCluster, pair: int) -> Failover:
    """SIGKILL the worker serving ``pair`` (once the cluster is healthy); time the take-over."""
    st = wait_for(cluster, healthy)
    victim = next(p["primary"] for p in st["pairs"] if p["pair"] == pair)
    moved = [p["pair"] for p in st["pairs"] if p["primary"] == victim]
    pid = next(i["pid"] for i in st["instances"] if i["id"] == victim)
    return _timed(cluster, victim, pid, moved, "instance_failed", "instance")


def kill_node(cluster: LocalCluster, node_id: str | None = None) -> Failover | None:
    """SIGKILL a node's supervisor (its processes follow it); by default the non-ingress node serving the
    most primaries, None if there is none. The node stays dead: ``restart_node`` brings it back."""
    st = wait_for(cluster, healthy)
    counts: dict[str, int] = {}
    for p in st["pairs"]:
        owner = p["primary"].split("/")[0]
        counts[owner] = counts.get(owner, 0) + 1
    if node_id is None:
        candidates = [n for n in counts if n != cluster.nodes[0].node_id]  # traffic enters at node 1
        if not candidates:
            return None
        node_id = max(candidates, key=lambda n: counts[n])
    moved = [p["pair"] for p in st["pairs"] if p["primary"].split("/")[0] == node_id]
    pid = next(n["pid"] for n in st["nodes"] if n["id"] == node_id)
    return _timed(cluster, node_id, pid, moved, "node_failed", "node")


def restart_node(cluster: LocalCluster, node_id: str, log_dir: Path) -> None:
    """Start a killed node again from its config (its leftovers removed first)."""
    node = node_of(cluster, node_id)
    node.stop()
    fresh = LocalNode.start(node.config_path, log_dir / f"{node_id}.restarted.log")
    cluster.nodes[cluster.nodes.index(node)] = fresh
    fresh.wait_ready()
