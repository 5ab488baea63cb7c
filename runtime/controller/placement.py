"""Placement: which instance serves each pair as primary and as secondary, and how that changes on failures.

Pure and deterministic (no clock, no sockets). The first placement fixes the
number of pairs (one per instance of the nodes up at that moment) and gives
the buckets round-robin to them; after that pairs never change number, only
where they are served:

* a failed primary's pair goes to its secondary (a take-over), with the
  dead primary's commit record (``decision``: the last batch it released, or
  ``UNKNOWN`` after a node failure) so the new primary knows what to replay;
* a pair that lost its secondary (or whose secondary became its primary)
  gets a new one on another node, from the instances that are up, the least
  busy first; none if there is no such instance, until one comes up;
* a pair whose primary failed without a secondary restarts with fresh state
  on a live instance (its flows' state is lost: no redundancy was left).
  When that is only suspected (its nodes stopped beating: a crash, or a
  stall such as overload or a paused VM), it first waits ``fresh_grace_ms``
  (*stranded*): if the primary comes back as the same process, it keeps the
  pair and its state; when the grace is over, the pair restarts fresh. (When
  a primary's and then its secondary's nodes are suspected in one look, the
  pair first goes to the secondary, a take-over, and strands there: the
  secondary picked for it meanwhile has no replica yet. Likewise a secondary
  picked less than ``SYNC_ALLOWANCE_MS`` before its primary fell silent.)

A pair's *generation* is the epoch at which its primary or secondary last
changed; workers rebuild a pair's replication only when it changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deft.runtime.dataplane.routes import FRESH, NONE, UNKNOWN, node_names  # the route set's own codes

Instance = tuple[str, int]  # (node id, instance index)

#: A secondary counts as a replica of a suspected primary only if it was picked this long before the
#: primary fell silent: time for the route set to reach the primary and its Sync to be decided.
SYNC_ALLOWANCE_MS = 100


@dataclasses.dataclass
class Pair:
    primary: Instance
    secondary: Instance | None
    decision: int = FRESH        # how the current primary got the pair
    generation: int | None = None  # None: changed since the last route set; stamped at the next
    stranded_ms: float | None = None  # every replica's node suspected since then (see the module doc)
    secondary_since_ms: float | None = None  # when its secondary was picked (None: the first placement)


class Assignment:
    def __init__(self, n_buckets: int, fresh_grace_ms: float = 0.0):
        self.n_buckets = n_buckets
        self.fresh_grace_ms = fresh_grace_ms
        self.pairs: list[Pair] = []
        self.buckets: list[int] = []
        self.dead: set[Instance] = set()  # failed and not seen usable since

    @property
    def placed(self) -> bool:
        return bool(self.pairs)

    @classmethod
    def from_request(cls, req: dict[str, Any], fresh_grace_ms: float = 0.0) -> "Assignment":
        """The assignment a ``set_routes`` request carried (a restarted controller takes it back from
        the nodes: the route set they hold is the assignment it pushed last)."""
        names = [str(n[0]) for n in req["nodes"]]
        a = cls(len(req["buckets"]), fresh_grace_ms)
        for pn, pi, sn, si, *rest in req["pairs"]:
            decision, generation = (rest[0], rest[1]) if len(rest) == 2 else (FRESH, req["epoch"])
            a.pairs.append(Pair((names[pn], pi), (names[sn], si) if sn != NONE else None, decision, generation))
        a.buckets = [int(b) for b in req["buckets"]]
        return a

    def place(self, instances: dict[str, int]) -> None:
        """First placement: every instance the primary of a pair, its secondary the same index on the next node."""
        nodes = sorted(instances)
        if not nodes or any(instances[n] < 1 for n in nodes):
            raise ValueError("placement needs at least one node with at least one instance")
        for k, node in enumerate(nodes):
            nxt = nodes[(k + 1) % len(nodes)]
            for i in range(instances[node]):
                second = (nxt, i) if nxt != node and i < instances[nxt] else None
                self.pairs.append(Pair((node, i), second))
        self.buckets = [b % len(self.pairs) for b in range(self.n_buckets)]

    # -- failures ---------------------------------------------------------------------------------------
    def instance_failed(self, failed: Instance, decisions: dict[int, int] | None, usable: list[Instance]) -> list[int]:
        """``failed`` died; ``decisions`` its commit record per pair (None: unreadable). The pairs changed."""
        return self._lose({failed}, decisions, usable)

    def node_failed(self, node: str, usable: list[Instance], now_ms: float = 0.0,
                    silent_since_ms: float | None = None) -> list[int]:
        """``node`` stopped beating at ``silent_since_ms`` (suspected: its processes may be alive, only late)."""
        lost = {p.primary for p in self.pairs if p.primary[0] == node}
        lost |= {p.secondary for p in self.pairs if p.secondary and p.secondary[0] == node}
        return self._lose(lost, None, usable, now_ms, suspected=True,
                          silent_since_ms=now_ms if silent_since_ms is None else silent_since_ms)

    def _lose(self, lost: set[Instance], decisions: dict[int, int] | None, usable: list[Instance],
              now_ms: float = 0.0, suspected: bool = False, silent_since_ms: float = 0.0) -> list[int]:
        self.dead |= lost
        usable = [u for u in usable if u not in lost]
        changed = []
        for k, pair in enumerate(self.pairs):
            if pair.primary in lost:
                replica = pair.secondary is not None and pair.secondary not in lost
                if replica and suspected and self.fresh_grace_ms > 0 and pair.secondary_since_ms is not None \
                        and pair.secondary_since_ms + SYNC_ALLOWANCE_MS > silent_since_ms:
                    replica = False  # picked too late for the silent primary to have synced it
                if replica:
                    pair.primary, pair.secondary = pair.secondary, None
                    pair.decision = UNKNOWN if decisions is None else decisions.get(k, 0)
                elif suspected and self.fresh_grace_ms > 0:
                    if pair.stranded_ms is None:
                        pair.stranded_ms = now_ms
                    continue  # no replica left, maybe only late: wait (``fill``)
                else:
                    fresh = self._pick(usable, exclude_node=None)
                    if fresh is None:
                        continue  # nothing left to serve it: it stays where it was until something comes up
                    pair.primary, pair.secondary, pair.decision = fresh, None, FRESH
            elif pair.secondary in lost:
                pair.secondary = None
            else:
                continue
            pair.generation = None
            changed.append(k)
        return sorted(set(changed) | set(self.fill(usable, now_ms)))

    def fill(self, usable: list[Instance], now_ms: float = 0.0, survivors: frozenset = frozenset()) -> list[int]:
        """Serve pairs stuck on a dead primary, and give a secondary to every pair without one.

        ``survivors``: instances back from a suspicion as the same process (their state intact).
        """
        self.dead -= set(usable)
        changed = []
        for k, pair in enumerate(self.pairs):
            if pair.stranded_ms is not None:
                if self._unstrand(pair, survivors, now_ms):
                    changed.append(k)
                elif pair.stranded_ms is not None:
                    continue  # still waiting for one of its replicas
            if pair.primary in self.dead:
                fresh = self._pick(usable, exclude_node=None)
                if fresh is not None:
                    pair.primary, pair.secondary, pair.decision, pair.generation = fresh, None, FRESH, None
                    changed.append(k)
            if pair.secondary is None:
                pick = self._pick(usable, exclude_node=pair.primary[0])
                if pick is not None:
                    pair.secondary, pair.generation, pair.secondary_since_ms = pick, None, now_ms
                    changed.append(k)
        return changed

    def _unstrand(self, pair: Pair, survivors: frozenset, now_ms: float) -> bool:
        """A stranded pair: keep it on its primary if that is back as the same process, or (grace over) let
        ``fill`` restart it fresh. True if its roles changed. (A stranded pair has no secondary to hand it
        to: a suspected secondary is dropped at once, and its replica falls behind from then on.)"""
        if pair.primary in survivors and pair.primary not in self.dead:
            pair.stranded_ms = None               # the same process: it kept the pair's state
            if pair.secondary is not None and pair.secondary in self.dead:
                pair.secondary, pair.generation = None, None
                return True
            return False
        if now_ms - pair.stranded_ms >= self.fresh_grace_ms:
            pair.stranded_ms = None               # grace over: ``fill`` restarts it fresh
            self.dead.add(pair.primary)
        return False

    def _pick(self, usable: list[Instance], exclude_node: str | None) -> Instance | None:
        load: dict[Instance, int] = {u: 0 for u in usable}
        for p in self.pairs:
            for inst in (p.primary, p.secondary):
                if inst in load:
                    load[inst] += 1
        candidates = [u for u in usable if u[0] != exclude_node]
        return min(candidates, key=lambda u: (load[u], u)) if candidates else None

    # -- the route set ------------------------------------------------------------------------------------
    def nodes_used(self) -> set[str]:
        return {inst[0] for p in self.pairs for inst in (p.primary, p.secondary) if inst is not None}

    def request(self, epoch: int, endpoints: dict[str, tuple[str, ...]], live: set[str] | None = None) -> dict[str, Any]:
        """A ``set_routes`` request naming the nodes in use and the ``live`` ones (default: all of ``endpoints``).

        ``endpoints`` = {node id: (fabric, replication, copies)}. Pairs changed since
        the last request get generation ``epoch``.
        """
        names = sorted((set(endpoints) if live is None else set(live)) | self.nodes_used())
        index = {n: k for k, n in enumerate(names)}
        rows = []
        for pair in self.pairs:
            if pair.generation is None:
                pair.generation = epoch
            sn, si = (index[pair.secondary[0]], pair.secondary[1]) if pair.secondary else (NONE, NONE)
            rows.append([index[pair.primary[0]], pair.primary[1], sn, si, pair.decision, pair.generation])
        return {"cmd": "set_routes", "epoch": epoch,
                "nodes": [list(node_names([n, *endpoints.get(n, ("",))])) for n in names],
                "pairs": rows, "buckets": list(self.buckets)}


def place(nodes: list[tuple], n_buckets: int, epoch: int) -> dict[str, Any]:
    """A first ``set_routes`` request for ``nodes`` = [(id, fabric, instances[, replication[, copies]])]."""
    assignment = Assignment(n_buckets)
    assignment.place({n[0]: n[2] for n in nodes})
    return assignment.request(epoch, {n[0]: (n[1], *n[3:]) for n in nodes})
