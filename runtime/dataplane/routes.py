"""Routes: bucket -> pair -> (primary node, instance) [and secondary], in supervisor-owned shared memory.

The switch step of every stamping unit reads these tables per batch (two
fancy indexes). A pair is an NF instance slot: its primary, and later its
secondary on another node. Nodes are numbered in the table; each has a
fabric endpoint (where its fabric process receives packet batches), and the
table says which number is this node.

Layout (little-endian int64 words, then the endpoint strings):
  [epoch, n_buckets, n_pairs, n_nodes, self_node, write sequence]
  pair of bucket b           n_buckets words
  pair p: primary node, primary instance, secondary node, secondary instance,
          take-over decision, generation                                     MAX_PAIRS x 6
  node ids, fabric, replication and copies endpoints: MAX_NODES x 4 x ENDPOINT_BYTES, zero padded ASCII

The writer (the supervisor, on a ``set_routes`` from the controller or an
operator) and the readers in other processes (the io's switch, the workers)
share the tables through a sequence lock: the writer makes the write sequence
odd, writes everything, sets the epoch, and makes the sequence even again; a
reader copies the tables (``snapshot``) and keeps the copy only if the
sequence was even and unchanged around it. Bumping the epoch last was not
enough: route sets can come a few milliseconds apart (two failures), and a
reader descheduled while it read epoch N's tables read half of epoch N+1's
and sent packets to workers that were not their pairs' primaries (lost on
the gap timeout). Plain loads and stores suffice on x86-64 (TSO: stores are
seen in order, loads are not reordered with loads); another architecture
would need fences here. A route set whose epoch is not newer than the
current one is refused: a stale controller cannot move flows back.

A pair's *generation* is the epoch at which its primary or secondary last
changed: workers rebuild a pair's replication only when it changes, so a
failover elsewhere does not resync every pair. Its *take-over decision* says
how the current primary got the pair: ``FRESH`` (new state), ``UNKNOWN`` (its
previous primary's node died with the commit record: every staged batch is in
doubt), or the last batch the previous primary released (a worker crash).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from deft.runtime.errors import DeftError
from deft.runtime.ring.shm import attach_segment, create_segment, release_segment

MAX_PAIRS = 256
MAX_NODES = 32
ENDPOINT_BYTES = 120
NODE_NAMES = 4   # per node: its id, fabric, replication and copies endpoints
HEADER = 6
W_EPOCH, W_BUCKETS, W_PAIRS, W_NODES, W_SELF, W_SEQ = range(HEADER)
NONE = -1
FRESH, UNKNOWN = -2, -1   # take-over decision column: no take-over; a take-over without a commit record
PAIR_WORDS = 6
TARGET_SCALE = 1024  # target id of (node, instance) = node * TARGET_SCALE + instance


class RouteError(DeftError, ValueError):
    """A route set is inconsistent or stale; the message says what."""


def node_names(entry: Any) -> tuple[str, ...]:
    """A node of a ``set_routes`` request, [id, fabric, replication?, copies?], as NODE_NAMES strings
    (an endpoint left out is "": an older controller's request names fewer)."""
    if not isinstance(entry, (list, tuple)) or not 2 <= len(entry) <= NODE_NAMES:
        raise TypeError(f"a node is [id, fabric, replication?, copies?], got {entry!r:.80}")
    return tuple(str(x) for x in entry) + ("",) * (NODE_NAMES - len(entry))


@dataclasses.dataclass(frozen=True)
class RouteSet:
    """What a ``set_routes`` request carries, validated."""

    epoch: int
    nodes: list[tuple[str, str, str, str]]         # (node id, fabric, replication and copies base endpoints)
    pairs: list[tuple[int, int, int, int]]          # primary node, instance, secondary node, instance
    buckets: np.ndarray                             # pair of each bucket
    decisions: list[int] | None = None              # per pair: FRESH, UNKNOWN or the released batch
    generations: list[int] | None = None            # per pair: epoch of its last role change

    def rows(self) -> np.ndarray:
        """The pairs table as written to shared memory (PAIR_WORDS columns)."""
        n = len(self.pairs)
        rows = np.empty((n, PAIR_WORDS), dtype=np.int64)
        rows[:, :4] = np.asarray(self.pairs, dtype=np.int64).reshape(n, 4)
        rows[:, 4] = FRESH if self.decisions is None else self.decisions
        rows[:, 5] = self.epoch if self.generations is None else self.generations
        return rows

    @classmethod
    def from_request(cls, req: dict[str, Any], n_buckets: int, n_instances_of: dict[str, int]) -> "RouteSet":
        """From JSON: {"epoch", "nodes": [[id, fabric, replication?, copies?], ...],
        "pairs": [[pn, pi, sn, si(, decision, generation)], ...], "buckets": [...]}."""
        try:
            epoch = int(req["epoch"])
            nodes = [node_names(n) for n in req["nodes"]]
            full = [tuple(int(x) for x in p) for p in req["pairs"]]
            buckets = np.asarray(req["buckets"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise RouteError(f"set_routes: malformed request ({exc})") from None
        if not 0 < len(nodes) <= MAX_NODES or not 0 < len(full) <= MAX_PAIRS:
            raise RouteError(f"set_routes: 1..{MAX_NODES} nodes and 1..{MAX_PAIRS} pairs, got {len(nodes)}, {len(full)}")
        if any(len(p) not in (4, 6) for p in full):
            raise RouteError("set_routes: a pair is [primary node, instance, secondary node, instance"
                             "(, take-over decision, generation)]")
        pairs = [p[:4] for p in full]
        decisions = [p[4] if len(p) == 6 else FRESH for p in full]
        generations = [p[5] if len(p) == 6 else epoch for p in full]
        if any(d < FRESH for d in decisions) or any(not 0 < g <= epoch for g in generations):
            raise RouteError("set_routes: a take-over decision is -2, -1 or a batch; a generation is 1..epoch")
        if buckets.shape != (n_buckets,) or buckets.min() < 0 or buckets.max() >= len(pairs):
            raise RouteError(f"set_routes: buckets must be {n_buckets} pair numbers below {len(pairs)}")
        if any(len(text.encode()) >= ENDPOINT_BYTES for node in nodes for text in node):
            raise RouteError("set_routes: a node id or endpoint is too long")
        for k, (pn, pi, sn, si) in enumerate(pairs):
            for node, inst, what in ((pn, pi, "primary"), (sn, si, "secondary")):
                if what == "secondary" and node == NONE:
                    continue
                if not 0 <= node < len(nodes):
                    raise RouteError(f"set_routes: pair {k} {what} node {node} is not in nodes")
                limit = n_instances_of.get(nodes[node][0])
                if limit is not None and not 0 <= inst < limit:
                    raise RouteError(f"set_routes: pair {k} {what} instance {inst} not on {nodes[node][0]}")
            if sn == pn and sn != NONE:
                raise RouteError(f"set_routes: pair {k} has primary and secondary on the same node")
        return cls(epoch, nodes, pairs, buckets, decisions, generations)


class RouteTables:
    """Queries over the tables; a ``Routes`` answers from shared memory, a ``RouteSnapshot`` from a copy."""

    words: np.ndarray
    bucket_pair: np.ndarray
    table: np.ndarray
    pairs: np.ndarray
    _names: np.ndarray

    @property
    def epoch(self) -> int:
        return int(self.words[W_EPOCH])

    @property
    def self_node(self) -> int:
        return int(self.words[W_SELF])

    @property
    def n_pairs(self) -> int:
        return int(self.words[W_PAIRS])

    def nodes(self) -> list[tuple[str, str, str, str]]:
        """(node id, fabric, replication and copies base endpoints) of every node in the routes."""
        return [tuple(bytes(self._names[k, j]).rstrip(b"\x00").decode() for j in range(NODE_NAMES))
                for k in range(int(self.words[W_NODES]))]

    def primary_targets(self, buckets: np.ndarray) -> np.ndarray:
        """Target id (node * TARGET_SCALE + instance) of each bucket's primary."""
        p = self.pairs[self.bucket_pair[buckets]]
        return p[:, 0] * TARGET_SCALE + p[:, 1]

    def roles_of(self, instance: int) -> tuple[list[int], list[int]]:
        """The pairs this node's ``instance`` is the primary of, and those it is the secondary of."""
        n = int(self.words[W_PAIRS])
        p = self.pairs[:n]
        me = self.self_node
        primary = np.flatnonzero((p[:, 0] == me) & (p[:, 1] == instance)).tolist()
        secondary = np.flatnonzero((p[:, 2] == me) & (p[:, 3] == instance)).tolist()
        return primary, secondary

    def peers_of(self, instance: int) -> list[str]:
        """``node/nfI`` of every other instance this one replicates with (either way round)."""
        n = int(self.words[W_PAIRS])
        names = [node[0] for node in self.nodes()]
        me = self.self_node
        out = []
        for pn, pi, sn, si in self.pairs[:n].tolist():
            if (pn, pi) == (me, instance) and sn != NONE:
                out.append(f"{names[sn]}/nf{si}")
            elif (sn, si) == (me, instance):
                out.append(f"{names[pn]}/nf{pi}")
        return sorted(set(out))

    def local_buckets(self, instance: int) -> int:
        """How many buckets this node's instance is primary for (status)."""
        p = self.pairs[self.bucket_pair]
        return int(((p[:, 0] == self.self_node) & (p[:, 1] == instance)).sum())


class RouteSnapshot(RouteTables):
    """A private copy of one whole route set (``Routes.snapshot``): read it at leisure."""

    def __init__(self, words: np.ndarray, bucket_pair: np.ndarray, table: np.ndarray, names: np.ndarray):
        self.words, self.bucket_pair, self.table, self._names = words, bucket_pair, table, names
        self.pairs = table[:, :4]


class Routes(RouteTables):
    def __init__(self, name: str, mm, owner: bool):
        self.name = name
        self._mm = mm
        self._owner = owner
        words = np.ndarray((HEADER,), dtype=np.int64, buffer=mm)
        n_buckets = int(words[W_BUCKETS])
        self.words = words
        self.bucket_pair = np.ndarray((n_buckets,), dtype=np.int64, buffer=mm, offset=8 * HEADER)
        self.table = np.ndarray((MAX_PAIRS, PAIR_WORDS), dtype=np.int64, buffer=mm, offset=8 * (HEADER + n_buckets))
        self.pairs = self.table[:, :4]
        self._names = np.ndarray((MAX_NODES, NODE_NAMES, ENDPOINT_BYTES), dtype=np.uint8, buffer=mm,
                                 offset=8 * (HEADER + n_buckets + PAIR_WORDS * MAX_PAIRS))

    @staticmethod
    def nbytes(n_buckets: int) -> int:
        return 8 * (HEADER + n_buckets + PAIR_WORDS * MAX_PAIRS) + MAX_NODES * NODE_NAMES * ENDPOINT_BYTES

    @classmethod
    def create(cls, name: str, n_buckets: int, node_id: str, fabric: str, n_instances: int,
               replication: str = "", copies: str = "") -> "Routes":
        """Routes of a node on its own: pair i = local instance i, buckets spread evenly."""
        mm = create_segment(name, cls.nbytes(n_buckets))
        np.ndarray((HEADER,), dtype=np.int64, buffer=mm)[W_BUCKETS] = n_buckets
        routes = cls(name, mm, owner=True)
        routes.apply(RouteSet(1, [(node_id, fabric, replication, copies)], [(0, i, NONE, NONE) for i in range(n_instances)],
                              np.arange(n_buckets) % n_instances), self_node=0)
        return routes

    @classmethod
    def attach(cls, name: str) -> "Routes":
        return cls(name, attach_segment(name), owner=False)

    def apply(self, routes: RouteSet, self_node: int) -> None:
        """Write a validated route set under the sequence lock (see the module's docstring)."""
        if routes.epoch <= self.epoch:
            raise RouteError(f"set_routes: epoch {routes.epoch} is not newer than {self.epoch}: refused")
        self.words[W_SEQ] += 1   # odd: a write is under way
        self._names[:] = 0
        for k, node in enumerate(routes.nodes):
            for j, text in enumerate(node):
                raw = text.encode()[: ENDPOINT_BYTES - 1]
                self._names[k, j, : len(raw)] = np.frombuffer(raw, np.uint8)
        self.table[:] = NONE
        self.table[: len(routes.pairs)] = routes.rows()
        self.bucket_pair[:] = routes.buckets
        self.words[W_PAIRS], self.words[W_NODES], self.words[W_SELF] = len(routes.pairs), len(routes.nodes), self_node
        self.words[W_EPOCH] = routes.epoch
        self.words[W_SEQ] += 1   # even again: the route set is whole

    def snapshot(self) -> RouteSnapshot | None:
        """A consistent copy of the current route set, or None while the writer is at it (try later)."""
        words = self.words
        seq = int(words[W_SEQ])
        if seq & 1:
            return None
        snap = RouteSnapshot(words.copy(), self.bucket_pair.copy(), self.table.copy(), self._names.copy())
        if int(words[W_SEQ]) != seq:   # a write began meanwhile: the copy may mix two route sets
            return None
        return snap

    def close(self) -> None:
        self.words = self.bucket_pair = self.pairs = self.table = self._names = None  # type: ignore[assignment]
        release_segment(self._mm, self.name, self._owner)
