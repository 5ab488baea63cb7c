"""Node configuration: TOML in, frozen dataclasses out, validated at start.

Every problem is a ConfigError whose message names the file, the section and
key, and what was wrong, e.g.::

    node1.toml: [nf] batch_size: must be >= 1, got 0

Unknown sections and keys are refused too: a typo must not silently become a
default. The NF's own ``[nf.params]`` are validated by the NF class itself
(see ``deft.nfs``), at load time as well, so a bad parameter stops the node
before any process starts.

Reference (defaults in brackets)::

    [node]
    id = "node1"                          # required; names shared memory: /dev/shm/deft.<id>.*
    control = "tcp://127.0.0.1:7101"      # ZMQ ROUTER for deft-ctl
    controller = ""                       # deft-controller's heartbeat endpoint, e.g. tcp://127.0.0.1:7001
                                          # (a list: every controller, the active one and its standbys)
    heartbeat_ms = 10                     # heartbeat interval
    fabric = ""                           # workers' packet sockets: worker i binds this port + i, e.g. tcp://127.0.0.1:7210
    replication = ""                      # workers' 2PC sockets: worker i binds this port + i, e.g. tcp://127.0.0.1:7300
    copies = ""                           # workers' sockets for the copies other nodes send their replicas: worker i
                                          # binds this port + i, e.g. tcp://127.0.0.1:7400 ("": they go to the
                                          # 2PC socket, a wake-up each)

    [ingress]
    listen = "udp://127.0.0.1:4789"       # udp://HOST:PORT (VXLAN), shm://NAME (local ring), pcap://PATH,
                                          # or "none": no ingress, packets come from other nodes' units
    stamping_units = 1                    # stamping units (flow id spaces; all in the node's io process)
    buckets = 4096                        # flow table buckets (hash mod B)
    ring_slots = 4096                     # slots of each ingress -> unit ring (power of two)
    rcvbuf = 8388608                      # SO_RCVBUF of the VXLAN socket, bytes
    flow_idle_s = 300                     # stamper forgets flows idle this long
    flows_per_unit = 262144               # flow table slots of each stamping unit (40 bytes each, in shm)
    coalesce_us = 0                       # while traffic flows, read the socket at most this often
                                          # (bigger bursts, fewer messages per packet; 0 = as it comes)

    [egress]
    send_to = "udp://127.0.0.1:4790"      # udp://HOST:PORT (VXLAN) or shm://NAME
    ring_slots = 4096                     # slots of each worker -> egress ring

    [nf]
    kind = "nat"                          # flowcounter | nat | loadbalancer | firewall | portscan
    instances = 2                         # NF worker processes on this node
    batch_size = 64                       # output buffer: release when this many are processed...
    flush_us = 200                        # ...or when this long passed since the first one
    flush_on_idle = true                  # ...or as soon as the input rings are empty
    gap_timeout_ms = 100                  # a flow waits this long for a missing seq, then goes on
    flow_idle_s = 300                     # an instance forgets a flow idle this long (packet time)
    replicate = false                     # duplicates to secondaries, release after 2PC (needs [node] replication)
    buffer_batches = 32                   # input buffer = buffer_batches x batch_size packets
    restart = true                        # supervisor restarts a worker that dies

    [nf.params]                           # the NF's own parameters
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from deft.runtime.errors import ConfigError
from deft.runtime.params import Params
from deft.runtime.security import keys_from_config

_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_SECTIONS = {"node", "ingress", "egress", "nf", "raft", "security"}


@dataclasses.dataclass(frozen=True)
class NodeSection:
    id: str
    control: str
    controller: tuple[str, ...]   # heartbeat endpoints of the controllers (() = run without one)
    heartbeat_ms: int
    fabric: str          # base endpoint of the workers' packet sockets (from other nodes' io): worker i binds port + i
    replication: str     # base endpoint of the workers' replication sockets: worker i binds port + i
    metrics: str = ""    # http://HOST:PORT of the Prometheus endpoint ("" = none)
    copies: str = ""     # base endpoint of the workers' copy sockets (replicas' input): worker i binds port + i


@dataclasses.dataclass(frozen=True)
class IngressSection:
    listen: str
    stamping_units: int
    buckets: int
    ring_slots: int
    rcvbuf: int
    flow_idle_s: float
    flows_per_unit: int
    coalesce_us: int


@dataclasses.dataclass(frozen=True)
class EgressSection:
    send_to: str
    ring_slots: int

    @property
    def sent_by_workers(self) -> bool:
        """Each worker sends its own output (a udp:// egress); a shm:// sink is fed by the io alone
        (one producer per ring). See ``Worker.send_egress``."""
        return self.send_to.startswith("udp://")


@dataclasses.dataclass(frozen=True)
class NfSection:
    kind: str
    instances: int
    batch_size: int
    buffer_batches: int
    flush_us: int
    flush_on_idle: bool
    gap_timeout_ms: int
    flow_idle_s: float
    replicate: bool
    restart: bool
    params: dict[str, Any]

    @property
    def input_capacity(self) -> int:
        """Packets an instance may hold before processing (ring + pending list)."""
        return self.batch_size * self.buffer_batches


@dataclasses.dataclass(frozen=True)
class RaftSection:
    """``[raft]``: this node's member of the global-state Raft (``runtime/node/globalstate.py``)."""
    id: int
    members: dict[int, str]
    data_dir: str
    fsync: bool
    tick_ms: int
    learners: dict[int, str] = dataclasses.field(default_factory=dict)
    snapshot_every: int = 10_000


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    source: str
    node: NodeSection
    ingress: IngressSection
    egress: EgressSection
    nf: NfSection
    raft: RaftSection | None = None  # when [raft] is given
    keys: str = ""                   # [security] keys: the CURVE key directory, absolute ("" = plain sockets)

    def nf_params(self) -> Params:
        return Params(self.nf.params, self.source, "nf.params")


def _power_of_two(p: Params, key: str, default: int) -> int:
    value = p.int(key, default, min=2, max=1 << 20)
    if value & (value - 1):
        raise p.error(key, f"must be a power of two, got {value}")
    return value


def _section(raw: dict, name: str, source: str) -> Params:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return Params({k: v for k, v in value.items() if not (name == "nf" and k == "params")}, source, name)


def parse_config(raw: dict, source: str = "<config>") -> NodeConfig:
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: [{unknown[0]}]: unknown section (known: {', '.join(sorted(_SECTIONS))})")

    p = _section(raw, "node", source)
    node_id = p.str("id")
    if not _NODE_ID.match(node_id):
        raise p.error("id", f"use 1-40 letters, digits, '_' or '-', got {node_id!r}")
    controller = p.urls("controller", ("tcp", "ipc"))   # one, or the active controller and its standbys
    fabric = p.str("fabric", "")
    if fabric:
        fabric = p.url("fabric", ("tcp",))
    replication = p.str("replication", "")
    if replication:
        replication = p.url("replication", ("tcp",))
    copies = p.str("copies", "")
    if copies:
        copies = p.url("copies", ("tcp",))
    metrics = p.str("metrics", "")
    if metrics:
        metrics = p.url("metrics", ("http",))
    node = NodeSection(id=node_id, control=p.url("control", ("tcp", "ipc"), "tcp://127.0.0.1:7101"),
                       controller=controller, heartbeat_ms=p.int("heartbeat_ms", 10, min=1, max=10_000),
                       fabric=fabric, replication=replication, metrics=metrics, copies=copies)
    p.check_unknown()

    p = _section(raw, "ingress", source)
    listen = p.str("listen", "udp://127.0.0.1:4789")
    ingress = IngressSection(
        listen=listen if listen == "none" else p.url("listen", ("udp", "shm", "pcap"), "udp://127.0.0.1:4789"),
        stamping_units=p.int("stamping_units", 1, min=1, max=16),
        buckets=p.int("buckets", 4096, min=1, max=1 << 20),
        ring_slots=_power_of_two(p, "ring_slots", 4096),
        rcvbuf=p.int("rcvbuf", 8 << 20, min=0),
        flow_idle_s=p.float("flow_idle_s", 300.0, min=0.001),
        flows_per_unit=p.int("flows_per_unit", 1 << 18, min=16, max=1 << 26),
        coalesce_us=p.int("coalesce_us", 0, min=0, max=100_000),
    )
    p.check_unknown()
    if ingress.listen == "none" and not node.fabric:
        raise p.error("listen", '"none" needs [node] fabric: such a node gets its packets from other nodes')
    if ingress.listen.startswith("pcap://"):
        pcap_path = Path(ingress.listen[len("pcap://"):])
        if not pcap_path.is_file():
            raise p.error("listen", f"pcap file {str(pcap_path)!r} does not exist")

    p = _section(raw, "egress", source)
    egress = EgressSection(
        send_to=p.url("send_to", ("udp", "shm"), "udp://127.0.0.1:4790"),
        ring_slots=_power_of_two(p, "ring_slots", 4096),
    )
    p.check_unknown()

    p = _section(raw, "nf", source)
    params = raw.get("nf", {}).get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: [nf.params] must be a table")
    nf = NfSection(
        kind=p.str("kind"),
        instances=p.int("instances", 1, min=1, max=64),
        batch_size=p.int("batch_size", 64, min=1, max=4096),
        buffer_batches=p.int("buffer_batches", 32, min=1, max=1024),
        flush_us=p.int("flush_us", 200, min=0, max=10_000_000),
        flush_on_idle=p.bool("flush_on_idle", True),
        gap_timeout_ms=p.int("gap_timeout_ms", 100, min=1, max=600_000),
        flow_idle_s=p.float("flow_idle_s", 300.0, min=0.001),
        replicate=p.bool("replicate", False),
        restart=p.bool("restart", True),
        params=params,
    )
    p.check_unknown()
    if nf.replicate and not (node.replication and node.fabric):
        raise p.error("replicate", "needs [node] replication and [node] fabric (pairs span nodes)")
    config = NodeConfig(source=source, node=node, ingress=ingress, egress=egress, nf=nf,
                        raft=_raft_section(raw, source) if "raft" in raw else None,
                        keys=keys_from_config(raw, source))
    _check_nf(config)
    return config


def _raft_section(raw: dict, source: str):
    """``[raft] id, members, learners, data_dir, fsync, tick_ms, snapshot_every``: this node in the Raft.

    ``members`` are the voters every node starts with; ``learners`` (optional) members that
    receive the log without voting. A node joining a running cluster lists itself under
    ``learners`` and is added by ``deft-ctl raft add-learner`` on the leader (then ``promote``)."""
    p = _section(raw, "raft", source)
    members = _raft_endpoints(p, "members", p.table("members"))
    learners = _raft_endpoints(p, "learners", p.table("learners", {}))
    if set(members) & set(learners):
        raise p.error("learners", f"{sorted(set(members) & set(learners))} listed as members and learners")
    member_id = p.int("id", min=1)
    if member_id not in members and member_id not in learners:
        raise p.error("id", f"{member_id} is not in members ({sorted(members)}) or learners ({sorted(learners)})")
    section = RaftSection(id=member_id, members=members, data_dir=p.str("data_dir"),
                          fsync=p.bool("fsync", True), tick_ms=p.int("tick_ms", 10, min=1, max=10_000),
                          learners=learners, snapshot_every=p.int("snapshot_every", 10_000, min=1))
    p.check_unknown()
    return section


def _raft_endpoints(p, name: str, table: dict) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, endpoint in table.items():
        if not str(key).isdigit() or int(key) < 1:
            raise p.error(name, f"member ids are positive integers, got {key!r}")
        if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")):
            raise p.error(name, f"member {key}: expected tcp://HOST:PORT, got {endpoint!r}")
        out[int(key)] = endpoint
    return out


def _check_nf(config: NodeConfig) -> None:
    """Build the NF once so that its parameters are validated before anything starts."""
    from deft.nfs import Context, make_nf  # the NF layer sits above config; import late

    try:
        make_nf(config.nf.kind, config.nf_params(), Context(0, config.nf.instances))
    except ConfigError as exc:
        if str(exc).startswith(config.source):
            raise
        raise ConfigError(f"{config.source}: {exc}") from None


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, str(path))
