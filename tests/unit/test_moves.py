"""Planned moves (runtime/controller/moves.py): drains and rebalances end, keep every pair served by
two nodes, and leave a drained node serving nothing and the load even."""

from __future__ import annotations

import random

import pytest

from deft.runtime.controller.moves import Blocked, HandOver, Secondary, apply_step, drain_step, rebalance_step
from deft.runtime.controller.placement import Assignment


def cluster(nodes: dict[str, int]) -> tuple[Assignment, list]:
    a = Assignment(64)
    a.place(nodes)
    usable = sorted((n, i) for n, k in nodes.items() for i in range(k))
    a.fill(usable)   # as the controller does: a secondary for every pair that can have one
    return a, usable


def run(a: Assignment, next_step, limit: int = 200) -> list:
    """Carry out steps until none is left; every one must be valid where it is taken."""
    steps = []
    for _ in range(limit):
        step = next_step()
        if step is None:
            return steps
        assert not isinstance(step, Blocked), step.reason
        pair = a.pairs[step.pair]
        if isinstance(step, HandOver):
            assert pair.secondary is not None, "a hand-over needs a secondary"
            assert step.new_secondary is None or step.new_secondary[0] != pair.secondary[0]
        else:
            assert step.instance is None or step.instance[0] != pair.primary[0], "secondary on its primary's node"
        apply_step(a, step, decision=7)
        for p in a.pairs:
            assert p.secondary is None or p.secondary[0] != p.primary[0]
        steps.append(step)
    raise AssertionError(f"no end after {limit} steps")


def spread(a: Assignment, usable: list, secondaries: bool) -> int:
    """How many more pairs the busiest node serves in a role than the idlest (equal capacities)."""
    count = {u[0]: 0 for u in usable}
    for p in a.pairs:
        inst = p.secondary if secondaries else p.primary
        if inst in usable:
            count[inst[0]] += 1
    return max(count.values()) - min(count.values())


def test_a_joining_node_takes_primaries_and_secondaries():
    a, usable = cluster({"n1": 2, "n2": 2, "n3": 2})
    usable += [("n4", 0), ("n4", 1)]
    steps = run(a, lambda: rebalance_step(a, usable))
    assert any(isinstance(s, HandOver) for s in steps)
    assert sum(p.primary[0] == "n4" for p in a.pairs) == 1      # 6 primaries on 4 nodes: 2, 2, 1, 1
    assert sum(p.secondary[0] == "n4" for p in a.pairs if p.secondary) >= 1
    assert spread(a, usable, False) <= 1 and spread(a, usable, True) <= 1
    assert all(p.decision == 7 for p in a.pairs if p.primary[0] == "n4")   # took over with the decision


def test_a_drained_node_serves_nothing_and_its_pairs_keep_two_nodes():
    a, usable = cluster({"n1": 2, "n2": 2, "n3": 2})
    run(a, lambda: drain_step(a, "n2", usable))
    assert all("n2" not in (p.primary[0], p.secondary and p.secondary[0]) for p in a.pairs)
    assert all(p.secondary is not None for p in a.pairs)
    left = [u for u in usable if u[0] != "n2"]
    assert spread(a, left, False) <= 1     # its primaries spread over the others, not all to one
    # and a rebalance after it has nothing (or little) left to do
    run(a, lambda: rebalance_step(a, left))
    assert spread(a, left, False) <= 1


def test_a_balanced_cluster_needs_no_step():
    a, usable = cluster({"n1": 2, "n2": 2, "n3": 2})
    assert rebalance_step(a, usable) is None
    assert drain_step(a, "n9", usable) is None


def test_draining_the_last_other_node_is_blocked_when_no_node_can_take_a_primary():
    a, usable = cluster({"n1": 1, "n2": 1})
    run(a, lambda: drain_step(a, "n2", usable))     # n1 takes both primaries, without secondaries
    assert all(p.primary[0] == "n1" and p.secondary is None for p in a.pairs)
    b, usable_b = cluster({"n1": 1})
    assert drain_step(b, "n1", usable_b) == Blocked("pair 0: no instance on another node can take it")


@pytest.mark.parametrize("seed", range(40))
def test_random_clusters_drain_and_rebalance_to_an_end(seed):
    rng = random.Random(seed)
    nodes = {f"n{k}": rng.randint(1, 3) for k in range(rng.randint(3, 5))}
    a, usable = cluster(nodes)
    joined = [(f"n{len(nodes)}", i) for i in range(rng.randint(0, 2))]
    usable += joined
    run(a, lambda: rebalance_step(a, usable))
    drained = rng.choice(sorted(nodes))
    run(a, lambda: drain_step(a, drained, usable))
    assert all(drained not in (p.primary[0], p.secondary and p.secondary[0]) for p in a.pairs)
    left = [u for u in usable if u[0] != drained]
    run(a, lambda: rebalance_step(a, left))
    if len({u[0] for u in left}) > 1:
        assert all(p.secondary is not None for p in a.pairs)


def primaries_per_instance(a: Assignment, usable: list) -> dict:
    count = {u: 0 for u in usable}
    for p in a.pairs:
        count[p.primary] += 1
    return count


@pytest.mark.parametrize("victim", [("n1", 0), ("n1", 1), ("n2", 0), ("n3", 1)])
def test_a_restarted_worker_gets_a_primary_back_from_a_rebalance(victim):
    """A worker dies: its pair goes to its secondary's worker (on another node), which now serves two.
    Back and ready, the worker has no primary; a rebalance gives it one, not to its node's other
    worker (it evened primaries per node only, and the pair's secondary on the node was that one)."""
    a, usable = cluster({"n1": 2, "n2": 2, "n3": 2})
    left = [u for u in usable if u != victim]
    a.instance_failed(victim, {p: 7 for p in range(len(a.pairs))}, left)
    a.fill(left)
    assert max(primaries_per_instance(a, left).values()) == 2
    a.fill(usable)                       # back: the controller gives it secondaries
    run(a, lambda: rebalance_step(a, usable))
    assert primaries_per_instance(a, usable) == {u: 1 for u in usable}
