"""The data path's cost, every target of the efficiency issue in one run beside the reference NAT.

    .venv/bin/python benchmarks/efficiency.py [--json FILE] [--quick] [--only reference,single,cluster]

Three devices, measured with the same generator (deft-trafficgen, a process of
its own), the same flows and the same packet mix (500 flows, 70 % UDP, 30 % TCP
with handshakes, 128-byte frames), their measurements interleaved so that the
machine's background load falls on all of them alike:

  reference  benchmarks/reference_nat.py: one process, per-packet Python NAT,
             no stamping, no replication (a third of DEFT's work)
  single     examples/node1.toml: one node, NAT on 2 instances, no replication
  cluster    examples/cluster/: controller + 3 nodes, NAT, replication on
  cluster-secure  examples/cluster-secure/: the same with CURVE on every socket (keys made per run)

The example configs are used as shipped except for their addresses: every port
is replaced by a free one (so a benchmark never collides with a running
cluster). Per device, after a warm-up that creates every flow once:

  latency    p50 / p99 (send to arrival, CLOCK_MONOTONIC) at 200, 1,000,
             3,000 and 10,000 pps (5 s each; --quick: 2 s)
  CPU        the device's own processes (utime + stime from /proc/PID/stat,
             every descendant of what was started) during each of those
             runs: cores busy and microseconds per delivered packet; and the
             whole machine's busy cores from /proc/stat less the generator's
  idle       cores busy over 5 s without traffic
  zero-loss  the highest rate at which a 3 s trial has no loss, no duplicate,
             no reordering, no flow whose NAT mapping changed and p99 <= 50 ms:
             x2 up from 2,500 pps, then bisection (4 steps)

Printed as a table with the issue's targets; ``--json`` writes everything.

To compare two versions of the code on a noisy machine, run them together and
alternate several short trials, e.g. ``--only single,single-before --before
CHECKOUT --together --repeat 7 --quick --no-search``: the medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import orjson

from deft.runtime.ring import cleanup_node
from deft.tools.localnode import LocalController, LocalNode, consecutive_ports, free_port, to_toml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWS, TCP_RATIO, SIZE = 500, 0.3, 128
CLK_TCK = os.sysconf("SC_CLK_TCK")
RATES = (200, 1000, 3000, 10000)
MAX_INSTANCES = 16   # ports kept free above each new tcp port (a node's workers bind base + i)


# -- processes and CPU ---------------------------------------------------------------------------

def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(roots: list[int]) -> list[int]:
    kids, out, todo = _children_of(), [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode() for w in cmd if w]
    if "deft.runtime.procs" in words:
        k = words.index("deft.runtime.procs")
        role = words[k + 1]
        index = words[words.index("--index") + 1] if "--index" in words else ""
        cfg = Path(words[words.index("--config") + 1]).stem if "--config" in words else ""
        return f"{cfg}/{role}{index}{'(standby)' if '--standby' in words else ''}"
    if "deft.runtime.node" in words:
        return f"{Path(words[-1]).stem}/supervisor"
    if "deft.runtime.controller.main" in words:
        return "controller"
    return Path(words[1]).name if len(words) > 1 else words[0]


class CpuMeter:
    """CPU of a device's processes (all descendants of its roots) between start() and stop()."""

    def __init__(self, roots: list[int]):
        self.roots = roots

    def start(self) -> None:
        self.pids = descendants(self.roots)
        self.before = {p: cpu_seconds(p) for p in self.pids}
        self.stat_before = _proc_stat()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        used = {p: cpu_seconds(p) - c for p, c in self.before.items()}
        stat = _proc_stat()
        busy = (stat[0] - self.stat_before[0]) / CLK_TCK
        by_name: dict[str, float] = {}
        for p, c in used.items():
            name = re.sub(r"\d+$", "", process_name(p).split("/")[-1])
            by_name[name] = by_name.get(name, 0.0) + c
        return {"wall_s": wall, "cpu_s": sum(used.values()), "machine_busy_s": busy, "by_role": by_name}


def _proc_stat() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


# -- devices -------------------------------------------------------------------------------------

def _fresh_ports(config: dict, mapping: dict[int, int]) -> dict:
    """The config with every tcp/udp/http port replaced (the same old port -> the same new port): two
    devices from the same example (--together) never bind the same port.

    A tcp port gets a block below the kernel's ephemeral range with its neighbours free: worker i
    binds the fabric and 2PC base ports + i, and a bind(0) port's neighbour may be any connection's
    by then (a worker once found base + 1 taken and restarted for ever: "Address already in use")."""

    def swap(value):
        if isinstance(value, str):
            def repl(m: re.Match) -> str:
                old = int(m.group(2))
                if old not in mapping:
                    mapping[old] = (consecutive_ports(MAX_INSTANCES) if m.group(1) in ("tcp", "http")
                                    else free_port(socket.SOCK_DGRAM))
                return f"{m.group(1)}://127.0.0.1:{mapping[old]}"
            return re.sub(r"(tcp|udp|http)://127\.0\.0\.1:(\d+)", repl, value)   # http: metrics
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    return swap(config)


class Device:
    name = ""
    ingress = egress = ""

    def roots(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class ReferenceNat(Device):
    name = "reference"

    def __init__(self, tmp: Path):
        self.ingress = f"udp://127.0.0.1:{free_port()}"
        self.egress = f"udp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "reference_nat.py"), "--listen", self.ingress,
                                      "--send-to", self.egress, "--public-ip", "203.0.113.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stderr.readline()
        if b"listening" not in line:
            raise RuntimeError(f"reference_nat.py did not start: {line!r}")

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ExampleNodes(Device):
    """Nodes (and a controller) started from example configs, with fresh ports."""

    def __init__(self, name: str, tmp: Path, node_files: list[Path], controller_file: Path | None = None,
                 overrides: dict[tuple[str, str], Any] | None = None, python: str | None = None,
                 secure: bool = False):
        """``secure``: the configs' ``[security] keys`` point at keys made for this run, and this
        process speaks to the nodes with the operator key while the device runs."""
        self.name = name
        mapping: dict[int, int] = {}
        self.controller = None
        self.nodes: list[LocalNode] = []
        self.secure = secure
        tag = f"b{os.getpid()}{name[:2]}{'b' if name.endswith('-before') else ''}{'s' if secure else ''}"
        keys = tmp / f"{tag}-keys"
        if secure:
            from deft.runtime import sockets
            from deft.runtime.security import init_keys, load_keys

            init_keys(keys, ["controller1", "controller2", *(f"{tag}node{k}" for k in range(1, len(node_files) + 1))])
            sockets.use_keys(load_keys(keys, "operator", operator=True))
        try:
            if controller_file is not None:
                cfg = _fresh_ports(tomllib.loads(controller_file.read_text()), mapping)
                if secure:
                    cfg["security"] = {"keys": str(keys)}
                path = tmp / f"{tag}-controller.toml"
                path.write_text(to_toml(cfg))
                self.controller = LocalController.start(path, tmp / f"{tag}-controller.log", python)
            for f in node_files:
                raw = tomllib.loads(f.read_text())
                for (section, key), value in (overrides or {}).items():
                    raw.setdefault(section, {})[key] = value
                cfg = _fresh_ports(raw, mapping)
                cfg["node"]["id"] = f"{tag}{cfg['node']['id']}"
                if secure:
                    cfg["security"] = {"keys": str(keys)}
                path = tmp / f"{cfg['node']['id']}.toml"
                path.write_text(to_toml(cfg))
                self.nodes.append(LocalNode.start(path, tmp / f"{cfg['node']['id']}.log", python=python))
            for node in self.nodes:
                node.wait_ready(60)
            if self.controller is not None:
                n = len(self.nodes)
                self.controller.wait_for(lambda st: any(e["event"] == "routes_pushed" and e["ok"]
                                                        and len(e["nodes"]) == n for e in st["events"]), 60)
        except BaseException:
            self.stop()
            raise
        self.ingress = self.nodes[0].ingress
        self.egress = self.nodes[0].egress

    def roots(self) -> list[int]:
        pids = [node.proc.pid for node in self.nodes]
        if self.controller is not None:
            pids.append(self.controller.proc.pid)
        return pids

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            cleanup_node(node.node_id)
        if self.controller is not None:
            self.controller.stop()
        if self.secure:
            from deft.runtime import sockets

            sockets.use_keys(None)


# -- traffic -------------------------------------------------------------------------------------

def run_traffic(device: Device, tmp: Path, rate: int, packets: int, drain_ms: int = 400) -> tuple[dict, float]:
    """deft-trafficgen against the device: (its report, the generator's own CPU seconds)."""
    report = tmp / f"r{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "deft.tools.trafficgen", "--to", device.ingress, "--listen", device.egress,
           "--flows", str(FLOWS), "--tcp-ratio", str(TCP_RATIO), "--size", str(SIZE), "--rate", str(rate),
           "--packets", str(packets), "--drain-ms", str(drain_ms), "--json", str(report), "--quiet"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"trafficgen exited with {proc.returncode}")
    return orjson.loads(report.read_bytes()), usage.ru_utime + usage.ru_stime


def clean(report: dict) -> bool:
    lat = report.get("latency_us") or {}
    return (report["lost"] == 0 and report["duplicated"] == 0 and report["reordered"] == 0
            and not report.get("remapped_flows") and lat.get("p99", 1e9) <= 50_000)


def process_counters(device: Device) -> list[tuple[str, dict[str, Any]]]:
    """(role, counters) of every io and worker of the device's nodes (the reference NAT and the older
    layout: none)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for node in getattr(device, "nodes", []):
        status = node.status()
        if "io" not in status:
            return []
        out += [("io", status["io"]["counters"]), *(("worker", p["counters"]) for p in status["instances"])]
    return out


def loop_wakeups(device: Device) -> dict[str, int]:
    """Rounds that began after a sleep, per role, summed over the device's nodes: each is a wake-up
    of that process (the reference NAT and the older layout report none)."""
    woke: dict[str, int] = {}
    for role, counters in process_counters(device):
        woke[role] = woke.get(role, 0) + int(counters.get("sleeps", 0))
        if role == "worker":   # what woke the workers, and their rounds (a wake-up and the rounds
            for name, value in counters.items():   # that found more work right after)
                if name.startswith("woke_") or name == "rounds":
                    woke["worker_" + name] = woke.get("worker_" + name, 0) + int(value)
    return woke


def measure(device: Device, tmp: Path, rate: int, seconds: float) -> dict:
    meter = CpuMeter(device.roots())
    woke_before = loop_wakeups(device)
    meter.start()
    report, gen_cpu = run_traffic(device, tmp, rate, max(int(rate * seconds), 200))
    cpu = meter.stop()
    woke_after = loop_wakeups(device)
    delivered = max(report["received"], 1)
    lat = report.get("latency_us") or {}
    return {
        "rate": rate, "sent": report["sent"], "lost": report["lost"], "duplicated": report["duplicated"],
        "reordered": report["reordered"], "remapped_flows": report.get("remapped_flows"),
        "p50_us": lat.get("p50"), "p99_us": lat.get("p99"),
        "cores": round(cpu["cpu_s"] / cpu["wall_s"], 3),
        "cpu_us_per_packet": round(cpu["cpu_s"] / delivered * 1e6, 1),
        "machine_cores_less_generator": round((cpu["machine_busy_s"] - gen_cpu) / cpu["wall_s"], 3),
        "cpu_us_per_packet_by_role": {k: round(v / delivered * 1e6, 1) for k, v in sorted(cpu["by_role"].items())},
        # process wake-ups per packet delivered (the fixed cost of a round is paid this often)
        "wakeups_per_packet": {k: round((woke_after.get(k, 0) - v) / delivered, 2) for k, v in woke_before.items()},
    }


def idle_cores(device: Device, seconds: float) -> float:
    meter = CpuMeter(device.roots())
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    return round(cpu["cpu_s"] / cpu["wall_s"], 4)


class ZeroLossSearch:
    """x2 up from ``start`` until a trial fails, then ``bisections`` halving steps."""

    def __init__(self, start: int = 2500, bisections: int = 4, limit: int = 400_000):
        self.good, self.bad, self.rate = 0, None, start
        self.steps, self.bisections, self.limit = 0, bisections, limit
        self.trials: list[dict] = []

    @property
    def done(self) -> bool:
        return self.rate > self.limit if self.bad is None else self.steps >= self.bisections

    def next_rate(self) -> int:
        return self.rate if self.bad is None else (self.good + self.bad) // 2

    def record(self, rate: int, report: dict) -> None:
        ok = clean(report)
        self.trials.append({"rate": rate, "ok": ok, "lost": report["lost"], "reordered": report["reordered"],
                            "duplicated": report["duplicated"], "p99_us": (report.get("latency_us") or {}).get("p99")})
        if self.bad is not None:
            self.steps += 1
        if ok:
            self.good = rate
            if self.bad is None:
                self.rate = rate * 2
        else:
            self.bad = rate


def where_lost(device: Device) -> dict[str, int]:
    """Drop counters a lost packet can show up in, cumulative: the kernel's for the device's ingress
    socket (/proc/net/udp; ``ingress_socket_missing`` if it is gone) and, for DEFT, every io and worker
    counter named after a drop, a refusal or an error (egress sends the sink refused, packets for pairs
    not served here, stale ones). (A loss in none of them happened after the device: the generator's
    sink, which shares the cores.)"""
    out: dict[str, int] = {}
    if device.ingress.startswith("udp://"):
        port = int(device.ingress.rsplit(":", 1)[1])
        out["ingress_socket_missing"] = 1   # until found: a device whose ingress socket is gone drops all
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for fields in map(str.split, rows):
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out.pop("ingress_socket_missing", None)
                    out["ingress_socket_drops"] = out.get("ingress_socket_drops", 0) + int(fields[-1])
    for _, counters in process_counters(device):
        for name, value in counters.items():
            if isinstance(value, int) and any(w in name for w in ("drop", "full", "overflow", "stall", "refused",
                                                                   "error", "not_mine", "stale")):
                out[name] = out.get(name, 0) + value
    return out


# -- the run -------------------------------------------------------------------------------------

TARGETS = """targets (issue 11): cluster p50 <= 1.5 ms at 200 / 1,000 / 10,000 pps, p99 <= 10 ms at 10 kpps,
  <= 0.6 cores (60 us/packet) at 10 kpps, <= 0.25 cores at 1 kpps, zero-loss >= 0.5 x reference,
  idle <= 0.05 cores; single node p50 <= 0.5 ms at every rate, zero-loss >= 1.0 x reference"""


def start_devices(names: list[str], tmp: Path, overrides: dict | None = None,
                  before: Path | None = None) -> dict[str, Device]:
    """``before``: another checkout (with its own .venv) whose examples and code run as the
    devices ``single-before`` and ``cluster-before``, side by side with this tree's."""
    devices: dict[str, Device] = {}
    try:
        _start_each(devices, names, tmp, overrides, before)
    except BaseException:
        for dev in devices.values():   # a later device failed to start: stop the ones already running
            dev.stop()
        raise
    return devices


def _start_each(devices: dict[str, Device], names: list[str], tmp: Path, overrides: dict | None,
                before: Path | None) -> None:
    for name in names:
        if name.endswith("-before"):
            if before is None:
                raise SystemExit(f"efficiency.py: {name} needs --before PATH")
            python = str(before / ".venv" / "bin" / "python")
            if name == "single-before":
                devices[name] = ExampleNodes(name, tmp, [before / "examples" / "node1.toml"], python=python)
            else:
                d = before / "examples" / "cluster"
                devices[name] = ExampleNodes(name, tmp, [d / f"node{k}.toml" for k in (1, 2, 3)],
                                             d / "controller.toml", python=python)
            continue
        if name == "reference":
            devices[name] = ReferenceNat(tmp)
        elif name == "single":
            devices[name] = ExampleNodes("single", tmp, [ROOT / "examples" / "node1.toml"], overrides=overrides)
        elif name in ("cluster", "cluster-secure"):
            d = ROOT / "examples" / name
            devices[name] = ExampleNodes(name, tmp, [d / f"node{k}.toml" for k in (1, 2, 3)],
                                         d / "controller.toml", overrides=overrides, secure=name == "cluster-secure")
        else:
            raise SystemExit(f"efficiency.py: unknown device {name!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="efficiency.py")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="2 s latency runs, 2 bisection steps")
    ap.add_argument("--only", default="reference,single,cluster")
    ap.add_argument("--rates", default=",".join(str(r) for r in RATES))
    ap.add_argument("--no-search", action="store_true", help="skip the zero-loss searches")
    ap.add_argument("--together", action="store_true",
                    help="run every device at once, measurements interleaved (the default starts one device "
                         "at a time: an idle device's own wake-ups are load on the others)")
    ap.add_argument("--before", type=Path, help="a checkout of the code before a change (with its own "
                    ".venv): --only may then name single-before and cluster-before too")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="N trials per rate and device, alternating between the devices; the medians are "
                         "reported (with --together: a side-by-side comparison that survives a noisy machine)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key in every node config (experiments), e.g. nf.instances=1")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the devices' configs, logs and reports here and keep them (default: a "
                         "temporary folder, removed at the end)")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        overrides[(section, name)] = tomllib.loads(f"v = {value}")["v"]
    seconds = 2.0 if args.quick else 5.0
    rates = [int(r) for r in args.rates.split(",")]
    out: dict[str, Any] = {"flows": FLOWS, "tcp_ratio": TCP_RATIO, "size": SIZE, "overrides": args.set,
                           "devices": {}}
    names = args.only.split(",")
    groups = [names] if args.together else [[name] for name in names]
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        for group in groups:
            devices = start_devices(group, tmp, overrides, args.before)
            try:
                measure_devices(devices, out, rates, seconds, args)
            finally:
                for dev in devices.values():
                    dev.stop()
    print_summary(out)
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return 0


def measure_devices(devices: dict[str, Device], out: dict, rates: list[int], seconds: float, args) -> None:
    """Warm-up, idle, latency and CPU at every rate, then the zero-loss search, of ``devices``
    (interleaved when there are several: the same background noise)."""
    tmp = Path(tempfile.gettempdir())
    for name, dev in devices.items():
        run_traffic(dev, tmp, 2000, FLOWS)        # warm-up: every flow created once
        out["devices"][name] = {"latency": {}, "idle_cores": idle_cores(dev, 2.0 if args.quick else 5.0)}
    for rate in rates:
        trials: dict[str, list[dict]] = {name: [] for name in devices}
        for _ in range(args.repeat):   # trials of the devices alternate: a noisy spell hits them alike
            for name, dev in devices.items():
                trials[name].append(m := measure(dev, tmp, rate, seconds))
                print(f"{name:9s} {rate:>6} pps  p50 {m['p50_us'] or 0:8.0f} us  p99 {m['p99_us'] or 0:8.0f} us  "
                      f"lost {m['lost']}  cores {m['cores']:.3f}  {m['cpu_us_per_packet']:.0f} us/pkt  "
                      f"{m['cpu_us_per_packet_by_role']}  wake-ups per packet {m['wakeups_per_packet']}", flush=True)
        for name in devices:
            out["devices"][name]["latency"][str(rate)] = median_trial(trials[name])
    if args.no_search:
        return
    searches = {name: ZeroLossSearch(bisections=2 if args.quick else 4) for name in devices}
    while not all(s.done for s in searches.values()):
        for name, dev in devices.items():
            s = searches[name]
            if not s.done:
                rate = s.next_rate()
                before = where_lost(dev)
                report, _ = run_traffic(dev, tmp, rate, int(rate * (1.5 if args.quick else 3.0)))
                s.record(rate, report)
                if not s.trials[-1]["ok"]:   # where the loss shows, for whoever reads a failed trial
                    after = where_lost(dev)
                    s.trials[-1]["where"] = {k: v - before.get(k, 0) for k, v in after.items()
                                             if v - before.get(k, 0)}
                print(f"{name:9s} zero-loss trial {rate:>7} pps: {'ok' if s.trials[-1]['ok'] else 'FAIL'} "
                      f"{s.trials[-1]}", flush=True)
    for name, s in searches.items():
        out["devices"][name]["zero_loss_pps"] = s.good
        out["devices"][name]["zero_loss_trials"] = s.trials


def median_trial(trials: list[dict]) -> dict:
    """One trial, or the median of each figure over several (losses summed; the trials kept)."""
    if len(trials) == 1:
        return trials[0]
    med = dict(trials[len(trials) // 2])
    for key in ("p50_us", "p99_us", "cores", "cpu_us_per_packet", "machine_cores_less_generator"):
        values = sorted(t[key] for t in trials if t[key] is not None)
        med[key] = values[len(values) // 2] if values else None
    for key in ("sent", "lost", "duplicated", "reordered"):
        med[key] = sum(t[key] for t in trials)
    med["trials"] = trials
    return med


def print_summary(out: dict) -> None:
    devs = out["devices"]
    print("\n" + TARGETS)
    for name, d in devs.items():
        lat = d["latency"]
        row = "  ".join(f"{r:>5}: p50 {(m['p50_us'] or 0) / 1000:6.2f} p99 {(m['p99_us'] or 0) / 1000:6.2f} ms "
                        f"{m['cores']:.2f} cores {m['cpu_us_per_packet']:.0f} us/pkt" for r, m in lat.items())
        print(f"{name:9s} idle {d['idle_cores']:.3f} cores  zero-loss {d.get('zero_loss_pps', '-')}\n    {row}")
    ref = devs.get("reference", {}).get("zero_loss_pps")
    if ref:
        for name in ("single", "cluster"):
            if name in devs and devs[name].get("zero_loss_pps") is not None:
                print(f"{name} / reference zero-loss: {devs[name]['zero_loss_pps'] / ref:.2f}")


if __name__ == "__main__":
    sys.exit(main())
