"""Planned moves of pairs between instances: drain a node, spread the load (rebalance).

Pure and deterministic (no clock, no sockets). Given the assignment and the
instances that may serve, ``next_step`` says what an operation does next;
the controller carries the step out (``runtime/controller/operations.py``)
and asks again. No plan is kept between steps, so a failure that moves pairs
meanwhile is simply part of the next look.

Two kinds of step move a pair, both built from what failover already does:

* ``Secondary(pair, instance)``: ``instance`` becomes the pair's secondary
  (``None``: the pair keeps none). The primary brings it up to date with a
  Sync, as after a secondary's death.
* ``HandOver(pair, new_secondary)``: the secondary becomes the primary. The
  controller first *freezes* the primary: it stops releasing the pair's
  batches and waits until none is in flight, so its commit record names the
  last batch it released and nothing is in doubt. The new primary takes
  over with that decision, exactly as after a worker's death (it applies
  the batches up to it and replays its buffered copies of everything else):
  no packet lost, none released twice. ``new_secondary`` is the pair's next
  secondary (it gets a Sync from the new primary), or None.

A pair's primary moves to an instance that is not its secondary in two
steps: ``Secondary`` there, then ``HandOver`` once it is synced (the freeze
is refused until then, and the controller retries).
"""

from __future__ import annotations

import dataclasses

from deft.runtime.controller.placement import Assignment, Instance


@dataclasses.dataclass(frozen=True)
class Secondary:
    pair: int
    instance: Instance | None


@dataclasses.dataclass(frozen=True)
class HandOver:
    pair: int
    new_secondary: Instance | None


@dataclasses.dataclass(frozen=True)
class Blocked:
    """The operation cannot go on (it fails with this reason)."""
    reason: str


Step = Secondary | HandOver | Blocked


def drain_step(assignment: Assignment, node: str, usable: list[Instance]) -> Step | None:
    """The next step that takes ``node`` out of service (None: it serves no pair any more).

    Primaries leave first, to their secondary if it is on another node and
    not much busier than the idlest instance (else the idlest becomes the
    secondary first), then the secondaries left move to the least loaded
    instances elsewhere.
    """
    usable = [u for u in usable if u[0] != node]
    per_node = node_loads(assignment, usable, secondaries=False)
    prim, sec = loads(assignment, usable, False), loads(assignment, usable, True)
    for k, pair in enumerate(assignment.pairs):
        if pair.primary[0] != node:
            continue
        if not usable:
            return Blocked(f"pair {k}: no instance on another node can take it")
        # the taker: an instance of the node with the fewest primaries (per instance)
        pick = min(usable, key=lambda u: (per_node[u[0]], 2 * prim[u] + sec[u], u))
        if pair.secondary not in prim or per_node[pair.secondary[0]] > per_node[pick[0]]:
            return Secondary(k, pick)   # then the hand-over to it
        return HandOver(k, least_loaded(assignment, usable, avoid_nodes={node, pair.secondary[0]}))
    for k, pair in enumerate(assignment.pairs):
        if pair.secondary is not None and pair.secondary[0] == node:
            return Secondary(k, least_loaded(assignment, usable, avoid_nodes={node, pair.primary[0]}))
    return None


def rebalance_step(assignment: Assignment, usable: list[Instance]) -> Step | None:
    """The next step towards primaries, then secondaries, spread evenly over the nodes of ``usable``
    (in proportion to their instances; a pair leaves its node's busiest instance and goes to the
    destination's least busy one); None when no move makes it more even.

    A move of one role from node A to node B is taken only if it lowers sum(n**2 / capacity) over the
    nodes (n: the node's pairs in that role), so the steps end: a hand-over lowers it for primaries,
    a secondary move for secondaries, and a Secondary step that prepares a hand-over is followed by
    it (one-step moves come first at equal gain). Within a node, the instance with the fewest roles
    takes it. Pairs served outside ``usable`` (a draining node's) are left to the drain.
    """
    for secondaries in (False, True):
        step = _balance(assignment, usable, secondaries)
        if step is not None:
            return step
    return None


def _balance(assignment: Assignment, usable: list[Instance], secondaries: bool) -> Step | None:
    capacity: dict[str, int] = {}
    for u in usable:
        capacity[u[0]] = capacity.get(u[0], 0) + 1
    count = loads(assignment, usable, secondaries)
    per_node = dict.fromkeys(capacity, 0)
    fewest = {}   # the fewest pairs in this role of an instance of each node
    for u, n in count.items():
        per_node[u[0]] += n
        fewest[u[0]] = min(fewest.get(u[0], n), n)
    best = None
    for k, pair in enumerate(assignment.pairs):
        inst = pair.secondary if secondaries else pair.primary
        if inst not in count:
            continue
        src = inst[0]
        for dst in capacity:
            if dst == src or (secondaries and dst == pair.primary[0]):
                continue
            gain = (2 * per_node[src] - 1) / capacity[src] - (2 * per_node[dst] + 1) / capacity[dst]
            if gain <= 1e-9:
                continue
            # A hand-over makes the pair's secondary its primary: one step, if that instance is among the
            # least loaded of its node; else the pair first gets a secondary on the least loaded one. And
            # the pair leaves the busiest instance of its node. Per node alone, a dead worker's pair,
            # taken over by its secondary, went back to the restarted worker's node but to its other
            # worker (the pair's secondary there), and one worker kept two pairs' traffic
            one_step = secondaries or (pair.secondary is not None and pair.secondary[0] == dst
                                       and count.get(pair.secondary, 0) <= fewest[dst])
            key = (-gain, -count[inst], not one_step, k, dst)
            if best is None or key < best[0]:
                best = (key, k, dst, one_step)
    if best is None:
        return None
    _, k, dst, one_step = best
    pair = assignment.pairs[k]
    if not secondaries and one_step:
        return HandOver(k, pair.primary)    # the old primary (on another node) becomes its secondary
    prim, sec = loads(assignment, usable, False), loads(assignment, usable, True)
    on_dst = [u for u in usable if u[0] == dst]
    if secondaries:
        return Secondary(k, min(on_dst, key=lambda u: (sec[u], prim[u], u)))
    return Secondary(k, min(on_dst, key=lambda u: (prim[u], sec[u], u)))   # to hand over to next


def loads(assignment: Assignment, usable: list[Instance], secondaries: bool) -> dict[Instance, int]:
    """Pairs each usable instance serves as primary (or as secondary)."""
    count = {u: 0 for u in usable}
    for pair in assignment.pairs:
        inst = pair.secondary if secondaries else pair.primary
        if inst in count:
            count[inst] += 1
    return count


def node_loads(assignment: Assignment, usable: list[Instance], secondaries: bool) -> dict[str, float]:
    """Pairs per instance of each node of ``usable`` in that role."""
    count, capacity = {}, {}
    for u, n in loads(assignment, usable, secondaries).items():
        count[u[0]] = count.get(u[0], 0) + n
        capacity[u[0]] = capacity.get(u[0], 0) + 1
    return {node: count[node] / capacity[node] for node in count}


def least_loaded(assignment: Assignment, usable: list[Instance], avoid_nodes: set[str]) -> Instance | None:
    """An instance off ``avoid_nodes``: on the node with the fewest roles per instance (primaries
    count double), the instance of it with the fewest."""
    prim, sec = loads(assignment, usable, False), loads(assignment, usable, True)
    candidates = [u for u in usable if u[0] not in avoid_nodes]
    if not candidates:
        return None
    node_p, node_s = node_loads(assignment, usable, False), node_loads(assignment, usable, True)
    return min(candidates, key=lambda u: (2 * node_p[u[0]] + node_s[u[0]], 2 * prim[u] + sec[u], u))


def apply_step(assignment: Assignment, step: Secondary | HandOver, decision: int | None = None) -> None:
    """Change the assignment as ``step`` says (a hand-over with the frozen primary's ``decision``)."""
    pair = assignment.pairs[step.pair]
    if isinstance(step, Secondary):
        pair.secondary = step.instance
        pair.secondary_since_ms = None
    else:
        if pair.secondary is None or decision is None:
            raise ValueError(f"pair {step.pair}: a hand-over needs a secondary and the primary's decision")
        pair.primary, pair.secondary = pair.secondary, step.new_secondary
        pair.decision = decision
        pair.secondary_since_ms = None
    pair.generation = None
