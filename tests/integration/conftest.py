"""Start real deft-node processes on loopback, and always stop them by PID.

``start_node(kind=..., instances=..., params=...)`` writes a config with free
ports and a node id unique to the test, starts ``deft-node``, waits until its
control endpoint answers, and returns a handle. At teardown every started
process gets SIGTERM, then SIGKILL, and the node's /dev/shm objects are
checked and removed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deft.runtime.ring import cleanup_node, leftovers
from deft.tools.ctl import NoAnswer, query

pytestmark = pytest.mark.slow


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


@dataclasses.dataclass
class NodeHandle:
    node_id: str
    config_path: Path
    proc: subprocess.Popen
    control: str
    ingress: str
    egress: str
    log_path: Path

    def status(self, timeout_ms: int = 3000) -> dict:
        return query(self.control, {"cmd": "status"}, timeout_ms)

    def wait_ready(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"deft-node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                st = self.status(500)
            except NoAnswer:
                continue
            procs = [st["ingress"], st["egress"], *st["units"], *st["instances"]]
            if all(p["ready"] for p in procs):
                return st
            time.sleep(0.1)
        raise AssertionError(f"node {self.node_id} not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_node(tmp_path):
    handles: list[NodeHandle] = []
    n = 0

    def start(kind: str = "nat", instances: int = 2, params: dict | None = None, **sections) -> NodeHandle:
        nonlocal n
        n += 1
        node_id = f"it{os.getpid()}n{n}"
        ingress = f"udp://127.0.0.1:{free_port()}"
        egress = f"udp://127.0.0.1:{free_port()}"
        control = f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        if params is None:
            params = {"public_ip": "203.0.113.1"} if kind == "nat" else {}
        cfg = {
            "node": {"id": node_id, "control": control},
            "ingress": {"listen": ingress, "stamping_units": 1, **sections.get("ingress", {})},
            "egress": {"send_to": egress, **sections.get("egress", {})},
            "nf": {"kind": kind, "instances": instances, **sections.get("nf", {})},
        }
        lines = []
        for section, values in cfg.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("[nf.params]")
        lines += [f"{k} = {toml_value(v)}" for k, v in params.items()]
        path = tmp_path / f"{node_id}.toml"
        path.write_text("\n".join(lines) + "\n")
        log_path = tmp_path / f"{node_id}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "deft.runtime.node", "--config", str(path)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        handle = NodeHandle(node_id, path, proc, control, ingress, egress, log_path)
        handles.append(handle)
        handle.wait_ready()
        return handle

    yield start
    for h in handles:
        pids = []
        try:
            st = h.status(500)
            pids = [p["pid"] for p in [st["ingress"], st["egress"], *st["units"], *st["instances"]] if p["pid"]]
        except NoAnswer:
            pass
        h.stop()
        for pid in pids:  # children die with the supervisor; make sure of it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = leftovers(h.node_id)
        cleanup_node(h.node_id)
        assert not left, f"node {h.node_id} left shared memory: {left}"


def run_trafficgen(node: NodeHandle, tmp_path: Path, *args: str, timeout: float = 120) -> dict:
    """Run deft-trafficgen against a node as a separate process; return its JSON report."""
    import orjson

    report = tmp_path / f"report{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "deft.tools.trafficgen", "--to", node.ingress, "--listen", node.egress,
           "--json", str(report), "--quiet", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return orjson.loads(report.read_bytes())
