"""Start and stop deft-node processes on this machine: for tests, benchmarks and the demo.

    node = LocalNode.start(write_config(tmp / "n1.toml", node_config("n1", kind="nat")))
    node.wait_ready()
    ... node.status() ...
    node.stop()          # SIGTERM, then SIGKILL; every child pid too; /dev/shm of the node removed

Everything binds to 127.0.0.1 on ports picked free at config time. ``stop``
stops by PID whatever the node started, even if the supervisor was killed
first, and reports what it had to clean up.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deft.runtime.ring import cleanup_node, leftovers
from deft.tools.ctl import NoAnswer, query


_handed: set[int] = set()  # ports free_port() and consecutive_ports() gave out in this process


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free now, never one this process handed out before: the kernel may give a released
    port to the next ``bind(0)`` (a node's control port once equalled the controller's)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed:
            _handed.add(port)
            return port
    raise RuntimeError("no fresh free port")


def node_config(node_id: str, kind: str = "nat", instances: int = 2, params: dict | None = None,
                **sections: dict) -> dict[str, dict]:
    """A node config as nested dicts, with free loopback ports; ``sections`` override keys per section."""
    if params is None:
        params = {"public_ip": "203.0.113.1"} if kind == "nat" else {}
    config = {
        "node": {"id": node_id, "control": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
        "ingress": {"listen": f"udp://127.0.0.1:{free_port()}", "stamping_units": 1},
        "egress": {"send_to": f"udp://127.0.0.1:{free_port()}"},
        "nf": {"kind": kind, "instances": instances},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    config["nf"]["params"] = params
    return config


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def to_toml(config: dict[str, dict]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k != "params"]
        if "params" in values:
            lines.append(f"[{section}.params]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values["params"].items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: dict[str, dict]) -> Path:
    path.write_text(to_toml(config))
    return path


def stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def processes(status: dict) -> list[dict]:
    """Every process of a node's status, supervisor excluded."""
    if "io" in status:
        return [status["io"], *status["instances"]]
    # a node of the older layout (benchmarks compare it side by side): ingress, units, fabric, egress
    optional = [p for p in (status["ingress"], status.get("fabric")) if isinstance(p, dict)]
    return [*optional, status["egress"], *status["units"], *status["instances"]]


class LocalNode:
    def __init__(self, config_path: Path, config: dict, proc: subprocess.Popen, log_path: Path | None):
        self.config_path = config_path
        self.node_id = config["node"]["id"]
        self.control = config["node"]["control"]
        self.ingress = config["ingress"]["listen"]
        self.egress = config["egress"]["send_to"]
        self.proc = proc
        self.log_path = log_path
        self.known_pids: set[int] = set()

    @classmethod
    def start(cls, config_path: Path, log_path: Path | None = None, env: dict | None = None,
              python: str | None = None, prefix: list[str] | None = None) -> "LocalNode":
        """Start ``deft-node`` on ``config_path``; ``env`` adds variables (e.g. ``DEFT_FAILPOINTS``);
        ``python`` runs another installation (benchmarks compare two trees); ``prefix`` runs it through
        a command that execs it (``ip netns exec NS``: the node's PID is still ``proc.pid``)."""
        import tomllib

        config = tomllib.loads(Path(config_path).read_text())
        out = open(log_path, "w") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen([*(prefix or []), python or sys.executable, "-m", "deft.runtime.node", "--config",
                                     str(config_path)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env} if env else None)
        finally:
            if log_path:
                out.close()
        return cls(Path(config_path), config, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def status(self, timeout_ms: int = 3000) -> dict:
        st = query(self.control, {"cmd": "status"}, timeout_ms)
        if "ingress" not in st:  # something else answers on the node's control port
            raise NoAnswer(f"{self.control}: not a deft-node status: {str(st)[:200]}")
        self.known_pids.update(p["pid"] for p in processes(st) if p["pid"])
        return st

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Wait until every process reports ready (attached to its rings and serving)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deft-node {self.node_id} exited with {self.proc.returncode}\n{self.log()}")
            try:
                st = self.status(500)
                if all(p["ready"] for p in processes(st)):
                    return st
            except NoAnswer:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"deft-node {self.node_id} not ready within {timeout:.0f} s\n{self.log()}")

    def stop(self, learn_pids: bool = True) -> list[str]:
        """Stop the node and everything it started; return the shm objects that had to be removed and
        the supervisor's lines about children it had to kill because SIGTERM did not stop them (a stop
        is clean when the list is empty). (``learn_pids`` False: the caller asked for the latest child
        pids already.)"""
        if self.proc.poll() is None:
            if learn_pids:
                try:
                    self.status(500)  # learn the latest child pids before they go
                except NoAnswer:
                    pass
            stop_process(self.proc)
        killed = [line for line in self.log().splitlines() if "did not stop within" in line]
        for pid in self.known_pids:  # children die with the supervisor (PDEATHSIG); make sure of it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = leftovers(self.node_id)
        cleanup_node(self.node_id)
        from deft.runtime.node.globalstate import worker_endpoints  # a killed supervisor leaves its ipc files

        for endpoint in worker_endpoints(self.node_id):
            try:
                os.unlink(endpoint[len("ipc://"):])
            except FileNotFoundError:
                pass
        return left + killed


def controller_config(heartbeat_ms: int = 10, miss_limit: int = 3, expect_nodes: int = 1) -> dict[str, dict]:
    return {"controller": {"control": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                           "heartbeats": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                           "heartbeat_ms": heartbeat_ms, "miss_limit": miss_limit,
                           "expect_nodes": expect_nodes}}


class LocalController:
    """A deft-controller process, stopped by PID."""

    def __init__(self, config: dict, proc: subprocess.Popen):
        self.control = config["controller"]["control"]
        self.heartbeats = config["controller"]["heartbeats"]
        self.proc = proc

    @classmethod
    def start(cls, config_path: Path, log_path: Path | None = None, python: str | None = None,
              prefix: list[str] | None = None) -> "LocalController":
        import tomllib

        config = tomllib.loads(Path(config_path).read_text())
        out = open(log_path, "w") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen([*(prefix or []), python or sys.executable, "-m", "deft.runtime.controller.main", "--config",
                                     str(config_path)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            if log_path:
                out.close()
        return cls(config, proc)

    def status(self, timeout_ms: int = 3000) -> dict:
        return query(self.control, {"cmd": "status"}, timeout_ms)

    def wait_for(self, predicate, timeout: float = 20.0) -> dict:
        """Poll status until ``predicate(status)`` holds; return that status."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deft-controller exited with {self.proc.returncode}")
            try:
                last = self.status(500)
                if predicate(last):
                    return last
            except NoAnswer:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"controller condition not met within {timeout:.0f} s; last status: {last}")

    def stop(self) -> None:
        stop_process(self.proc, 10)


def consecutive_ports(n: int = 2) -> int:
    """A free port p with p + 1 .. p + n - 1 free too (worker i binds a node's base port + i).

    Picked below the kernel's ephemeral range: a port from there can be handed to any later
    ``bind(0)`` or outgoing connection between now and the worker's bind, and p + 1 would be lost.
    Never the same port twice in one process: two nodes of a cluster checked the same free pair once
    (CI: the second node's workers could not bind for 30 s).
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(max(1024, low - 12_000), low - n)
        ports = set(range(p, p + n))
        if ports & _handed:  # free now, but given to another node of this process to bind later
            continue
        socks = [socket.socket() for _ in ports]
        try:
            for s, port in zip(socks, sorted(ports)):
                s.bind(("127.0.0.1", port))
            _handed.update(ports)
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class LocalCluster:
    """A controller and ``n_nodes`` NAT nodes on loopback, routes placed over all of them.

    Node 1 takes the traffic (``ingress``); the others have no ingress and get
    their buckets straight from node 1's io; every node's egress goes to one
    address (``egress``), where a generator listens. ``stop()`` stops every
    process by PID and returns the shared memory that running nodes left behind.
    """

    def __init__(self, tmp: Path, tag: str, n_nodes: int = 2, *, replicate: bool = False,
                 miss_limit: int = 10, logs: bool = True, kind: str = "nat", params: dict | None = None,
                 instances: int = 2, raft: bool | dict = False, nf: dict | None = None,
                 env: dict[int, dict] | None = None, metrics: bool = False, controller: dict | None = None,
                 standby: bool = False, keys: Path | None = None):
        """``kind``/``params``/``instances``/``nf`` (extra ``[nf]`` keys) choose the NF (NAT by
        default); ``raft`` gives every node a member of the global-state Raft (``[raft]``, members on
        free loopback ports, data in ``tmp``; a dict adds its keys, e.g. ``{"fsync": False}``);
        ``env`` maps a node number (1-based) to extra environment variables of its processes;
        ``metrics`` gives the controller and every node a Prometheus endpoint (``metrics_urls``);
        ``controller`` adds ``[controller]`` keys (e.g. the autoscaler's); ``standby`` starts a second
        controller (``standby``, the first one's peer; the nodes are the witnesses); ``keys`` makes a
        secure cluster: CURVE keys for every member made there (``deft-ctl keys init``), and
        ``[security] keys`` in every config (the caller speaks to it with ``use_keys`` and the
        operator key)."""
        self.tmp = tmp
        self.configs: list[Path] = []
        cfg = controller_config(heartbeat_ms=10, miss_limit=miss_limit, expect_nodes=n_nodes)
        cfg["controller"].update(controller or {})
        self.metrics_urls: list[str] = []   # controller first, then the nodes
        if metrics:
            cfg["controller"]["metrics"] = self._metrics_url()
        # node control endpoints chosen now: the controllers' witnesses
        self.node_controls = [f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}" for _ in range(n_nodes)]
        cfgs = [cfg]
        self.keys = keys
        if keys is not None:
            from deft.runtime.security import init_keys

            init_keys(keys, ["controller1", "controller2",
                             *(f"{tag}{os.getpid()}n{n}" for n in range(1, n_nodes + 3))])
            cfg["controller"].setdefault("id", "controller1")
            cfg["security"] = {"keys": str(keys)}
        if standby:
            cfg2 = controller_config(heartbeat_ms=10, miss_limit=miss_limit, expect_nodes=n_nodes)
            if keys is not None:
                cfg2["security"] = {"keys": str(keys)}
            cfg2["controller"].update({**(controller or {}), "id": "controller2", "standby": True})
            cfg["controller"].update(id="controller1", peers=[cfg2["controller"]["control"]],
                                     witnesses=self.node_controls)
            cfg2["controller"].update(peers=[cfg["controller"]["control"]], witnesses=self.node_controls)
            cfgs.append(cfg2)
        self.controllers: list[LocalController] = []
        self._heartbeats = [c["controller"]["heartbeats"] for c in cfgs]
        self._ctl_files = []
        for k, c in enumerate(cfgs):
            name = f"{tag}-controller{k + 1 if k else ''}"
            files = (tmp / f"{name}.toml", tmp / f"{name}.log" if logs else None)
            files[0].write_text(to_toml(c))
            self._ctl_files.append(files)
        self.controllers.append(LocalController.start(*self._ctl_files[0]))
        self.egress = f"udp://127.0.0.1:{free_port()}"
        self.nodes: list[LocalNode] = []
        self.members = {str(n): f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}" for n in range(1, n_nodes + 1)}
        if params is None:
            params = {"public_ip": "203.0.113.1"} if kind == "nat" else {}
        self.settings = dict(tag=tag, cfg=cfg, kind=kind, params=params, instances=instances, raft=raft,
                             replicate=replicate, nf=nf, logs=logs, metrics=metrics)
        for n in range(1, n_nodes + 1):
            self.nodes.append(self._start_node(n, (env or {}).get(n)))
        if standby:
            # The standby only lets the other ask first: with nodes (the witnesses) slow to come up it
            # can win the first lease, and the tests name controller1 the active one. So it starts
            # once controller1 holds the lease (from itself and two nodes)
            try:
                self.active_controller(30)
            except BaseException:
                self.stop()   # the caller gets no cluster to stop
                raise
            self.controllers.append(LocalController.start(*self._ctl_files[1]))

    def _start_node(self, n: int, env: dict | None = None, nf: dict | None = None) -> LocalNode:
        st = self.settings
        node_id = f"{st['tag']}{os.getpid()}n{n}"
        node = {"controller": list(self._heartbeats),   # every controller's, the standby's too
                "fabric": f"tcp://127.0.0.1:{consecutive_ports(st['instances'])}"}
        if n <= len(self.node_controls):
            node["control"] = self.node_controls[n - 1]
        if st["replicate"]:
            node["replication"] = f"tcp://127.0.0.1:{consecutive_ports(st['instances'])}"
            node["copies"] = f"tcp://127.0.0.1:{consecutive_ports(st['instances'])}"
        if st["metrics"]:
            node["metrics"] = self._metrics_url()
        # one public address for the cluster: a pair (and its port slice) moves between nodes on failover
        extra: dict[str, dict] = {"ingress": {"listen": "none"}} if n > 1 else {}
        if self.keys is not None:
            extra["security"] = {"keys": str(self.keys)}
        if st["raft"]:
            raft = st["raft"]
            extra["raft"] = {"id": n, "members": self.members, "data_dir": str(self.tmp / f"{node_id}-raft"),
                             **(raft if isinstance(raft, dict) else {})}
        conf = node_config(node_id, st["kind"], st["instances"], dict(st["params"]), node=node,
                           egress={"send_to": self.egress},
                           nf={"replicate": st["replicate"], **(st["nf"] or {}), **(nf or {})},
                           **extra)
        path = write_config(self.tmp / f"{node_id}.toml", conf)
        self.configs.append(path)
        return LocalNode.start(path, self.tmp / f"{node_id}.log" if st["logs"] else None, env)

    @property
    def ctl(self) -> LocalController:
        """The first controller still running (with a standby: which one is active is
        ``active_controller``; a standby answers status, and names the active one to anything else)."""
        return next((c for c in self.controllers if c.proc.poll() is None), self.controllers[0])

    def active_controller(self, timeout: float = 10.0) -> LocalController:
        """The controller whose status says it is active (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.controllers:
                try:
                    if c.proc.poll() is None and c.status(500)["controller"]["role"] == "active":
                        return c
                except NoAnswer:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"no active controller within {timeout:.0f} s")

    def restart_controller(self, kill: bool = True, k: int = 0) -> LocalController:
        """SIGKILL (``kill``) or stop controller ``k`` and start it again on the same config; the new one
        takes the assignment back from the nodes (or stands by). Its log goes on in another file."""
        import signal

        old = self.controllers[k]
        if kill and old.proc.poll() is None:
            old.proc.send_signal(signal.SIGKILL)
        old.stop()
        config, log = self._ctl_files[k]
        if log is not None:
            log = log.with_name(log.stem + f".{int(time.time() * 1000) % 100000}.log")
        self.controllers[k] = LocalController.start(config, log)
        return self.controllers[k]

    def _metrics_url(self) -> str:
        url = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        self.metrics_urls.append(url + "/metrics")
        return url

    def add_node(self, env: dict | None = None, nf: dict | None = None) -> LocalNode:
        """Start one more node (no ingress) that joins the running cluster; it is ready when this returns.
        ``env``: extra environment variables of its processes; ``nf``: extra ``[nf]`` keys."""
        if self.settings["raft"]:
            raise ValueError("add_node: Raft members join through raft_member, not here")
        node = self._start_node(len(self.nodes) + 1, env, nf)
        self.nodes.append(node)
        node.wait_ready()
        return node

    def wait_ready(self) -> "LocalCluster":
        """Every process serving and routes pushed over all the nodes."""
        for node in self.nodes:
            node.wait_ready()
        active = self.active_controller(20)
        active.wait_for(lambda st: any(e["event"] == "routes_pushed" and e["ok"]
                                       and len(e["nodes"]) == len(self.nodes) for e in st["events"]))
        for standby in self.controllers:   # and a standby knows which one is active (its first ask tells it)
            if standby is not active and standby.proc.poll() is None:
                standby.wait_for(lambda st: (st["controller"].get("active") or {}).get("control") == active.control)
        return self

    @property
    def ingress(self) -> str:
        return self.nodes[0].ingress

    def restart(self, k: int, log_tag: str = "again") -> LocalNode:
        """Start node ``k`` (0-based) again from its config (and disk), after it died; the old one is
        stopped by PID first (what it left in /dev/shm is removed)."""
        old = self.nodes[k]
        old.stop()
        log = old.log_path.with_name(f"{old.node_id}-{log_tag}.log") if old.log_path else None
        self.nodes[k] = LocalNode.start(self.configs[k], log)
        self.nodes[k].known_pids |= old.known_pids
        return self.nodes[k]

    def stop(self) -> dict[str, list[str]]:
        """Stop every process; return, per node that was still running, the shared memory it left.

        A node whose supervisor died before (a test killed it) leaves its objects by design:
        they are removed and not reported. A running node must leave nothing.
        """
        # the controller first: nodes stopping one by one under it would be failed over onto the ones
        # still running, each a take-over the next stop waits out (teardowns took 5-9 s)
        for ctl in self.controllers:
            ctl.stop()
        crashed = {node.node_id: node.proc.poll() is not None for node in self.nodes}
        for node in self.nodes:   # every supervisor told at once; each then waited for below
            if node.proc.poll() is None:
                try:
                    node.status(500)  # learn the latest child pids before they go
                except NoAnswer:
                    pass
                node.proc.send_signal(signal.SIGTERM)
        left = {}
        for node in self.nodes:
            objects = node.stop(learn_pids=False)
            if not crashed[node.node_id]:
                left[node.node_id] = objects
        return left
