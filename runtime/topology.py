"""Names and shapes of one node's shared objects, derived from the config alone.

The supervisor creates everything listed here; every other process attaches
by the same names, so no process needs to be told a name at run time.

  io: ingress --(ring in.u<u>)--> stamping unit u --(ring nf<i>.in, copies nf<i>.dup)--> NF worker i
  io: stamping unit u --(ZMQ, to another node)--> that node's worker (PULL; copies to its 2PC ROUTER)
  NF worker i --(ring out.nf<i>)--> io: egress
"""

from __future__ import annotations

import dataclasses

from deft.runtime.config import NodeConfig
from deft.runtime.ring.shm import shm_name


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


@dataclasses.dataclass(frozen=True)
class Topology:
    config: NodeConfig

    @property
    def node_id(self) -> str:
        return self.config.node.id

    def _name(self, what: str) -> str:
        return shm_name(self.node_id, what)

    @property
    def has_ingress(self) -> bool:
        return self.config.ingress.listen != "none"

    @property
    def units(self) -> range:
        """Stamping units of this node; none on a node without ingress."""
        return range(self.config.ingress.stamping_units if self.has_ingress else 0)

    @property
    def instances(self) -> range:
        return range(self.config.nf.instances)

    # rings
    def unit_ring(self, u: int) -> str:
        return self._name(f"in.u{u}")

    def nf_ring(self, i: int) -> str:
        """What this node's io hands worker i (its stamping units are one producer: one process)."""
        return self._name(f"nf{i}.in")

    def dup_ring(self, i: int) -> str:
        """Copies for the pairs instance i is the secondary of: never behind its own traffic."""
        return self._name(f"nf{i}.dup")

    def egress_ring(self, i: int) -> str:
        return self._name(f"out.nf{i}")

    def nf_ring_slots(self) -> int:
        """The ring into an instance holds the instance's whole input buffer."""
        return _next_pow2(self.config.nf.input_capacity)

    # shm input/output for local benchmarks
    def shm_input(self) -> str:
        return self._name("shmin." + self.config.ingress.listen.partition("://")[2])

    def shm_output(self) -> str:
        return self._name("shmout." + self.config.egress.send_to.partition("://")[2])

    # doorbells (one per consumer; FIFOs, see runtime/ring/fdbell.py)
    def takeover_bell(self, key: str) -> str:
        """The bell a role's hot standby sleeps on (a semaphore; key: io)."""
        return self._name(f"bell.takeover.{key}")

    def nf_bell(self, i: int) -> str:
        return self._name(f"bell.nf{i}")

    def egress_bell(self) -> str:
        """Rung by the workers after they publish output; the io sleeps on it."""
        return self._name("bell.egress")

    def ingress_bell(self) -> str:
        """Rung by a local shm producer (``shm://`` ingress)."""
        return self._name("bell.ingress")

    def move_files(self, i: int) -> tuple[str, str]:
        """Paths of a bucket move's request and answer payloads for worker ``i`` (bucketmove.py): files in
        /dev/shm named like the node's segments, so the supervisor's cleanup removes them too."""
        return tuple("/dev/shm" + self._name(f"move.nf{i}.{end}") for end in ("req", "ack"))

    # flow rules and counters
    def stamper_table(self, u: int) -> str:
        return self._name(f"stamper.u{u}")

    def bucket_load(self) -> str:
        """float64 per bucket: the packets the node's stamping units switched, halved every second
        (about twice the packets per second of each bucket; the autoscaler's pick of hot buckets)."""
        return self._name("bucketload")

    def commit_record(self, i: int) -> str:
        """Instance i's commit record: the replicated batches it released (supervisor-owned)."""
        return self._name(f"commit.nf{i}")

    def sent_log(self, u: int) -> str:
        """Unit u's log of recent sends to other nodes (resent by its successor)."""
        return self._name(f"sentlog.u{u}")

    def routes(self) -> str:
        return self._name("routes")

    def stats(self, role: str) -> str:
        return self._name(f"stats.{role}")
