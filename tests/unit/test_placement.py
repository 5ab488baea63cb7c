"""Placement: deterministic, secondaries never beside their primary, buckets spread evenly."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from deft.runtime.controller.placement import FRESH, UNKNOWN, Assignment, place
from deft.runtime.dataplane.routes import RouteSet


def nodes(*counts):
    return [(f"n{k}", f"tcp://127.0.0.1:{7200 + k}", c) for k, c in enumerate(counts)]


def test_three_nodes_pairs_and_buckets():
    req = place(nodes(2, 2, 2), 4096, epoch=7)
    assert req["epoch"] == 7 and len(req["pairs"]) == 6
    for pn, pi, sn, si, decision, gen in req["pairs"]:
        assert decision == FRESH and gen == 7
        assert sn != pn and sn == (pn + 1) % 3 and si == pi
    counts = collections.Counter(req["buckets"])
    assert max(counts.values()) - min(counts.values()) <= 1
    RouteSet.from_request(req, 4096, {"n0": 2, "n1": 2, "n2": 2})  # the nodes' own validation accepts it


def test_one_node_has_no_secondaries():
    req = place(nodes(3), 64, epoch=2)
    assert all(p[2] == -1 for p in req["pairs"])


def test_uneven_instance_counts_leave_extra_primaries_without_a_secondary():
    req = place(nodes(1, 3), 64, epoch=2)
    assert [p[:4] for p in req["pairs"] if p[0] == 1] == [[1, 0, 0, 0], [1, 1, -1, -1], [1, 2, -1, -1]]


def test_same_input_same_routes_whatever_the_order():
    a = place(nodes(2, 1, 2), 128, 3)
    b = place(list(reversed(nodes(2, 1, 2))), 128, 3)
    assert a == b
    assert np.array_equal(a["buckets"], b["buckets"])


def test_no_nodes_is_an_error():
    with pytest.raises(ValueError):
        place([], 64, 1)


def three_by_two() -> Assignment:
    a = Assignment(64)
    a.place({"n0": 2, "n1": 2, "n2": 2})
    a.request(1, {})
    return a


def up(*down):
    return [(f"n{k}", i) for k in range(3) for i in range(2) if (f"n{k}", i) not in down and f"n{k}" not in down]


def test_a_failed_worker_hands_its_pair_to_the_secondary_with_its_commit_record():
    a = three_by_two()
    changed = a.instance_failed(("n0", 1), {1: 41}, up(("n0", 1)))
    pair = a.pairs[1]
    assert pair.primary == ("n1", 1) and pair.decision == 41        # taken over, knowing what was released
    assert pair.secondary is not None and pair.secondary[0] not in ("n1",) and pair.secondary != ("n0", 1)
    assert 1 in changed and pair.generation is None
    assert a.pairs[5].secondary not in (("n0", 1), None)             # n2/1 had its secondary there
    req = a.request(2, {})
    assert req["pairs"][1][4:] == [41, 2] and req["pairs"][0][5] == 1  # untouched pairs keep their generation


def test_a_failed_node_leaves_every_take_over_in_doubt_and_secondaries_elsewhere():
    a = three_by_two()
    a.node_failed("n1", up("n1"))
    for k, pair in enumerate(a.pairs):
        assert pair.primary[0] != "n1" and (pair.secondary is None or pair.secondary[0] != "n1")
        assert pair.secondary is not None and pair.secondary[0] != pair.primary[0]
    assert a.pairs[2].primary == ("n2", 0) and a.pairs[2].decision == UNKNOWN
    assert a.pairs[0].decision == FRESH                              # n0's own pairs kept their primary


def test_a_pair_without_a_secondary_restarts_fresh_elsewhere_and_a_returning_instance_is_used_again():
    a = Assignment(8)
    a.place({"n0": 1, "n1": 1})
    a.node_failed("n0", [("n1", 0)])
    a.node_failed("n1", [])                                          # nothing left: pairs stay put
    assert a.pairs[1].primary == ("n1", 0)
    assert a.fill([("n0", 0)]) == [0, 1]                              # n0 is back: it serves them, fresh
    assert all(p.primary == ("n0", 0) and p.decision == FRESH for p in a.pairs)
    assert a.fill([("n0", 0), ("n1", 0)]) == [0, 1]                   # and n1: secondaries again
    assert all(p.secondary == ("n1", 0) for p in a.pairs)


def test_random_failures_never_put_both_roles_on_one_node():
    import random

    rng = random.Random(5)
    for _ in range(200):
        a = three_by_two()
        down: set = set()
        for _ in range(6):
            if rng.random() < 0.5:
                victim = (f"n{rng.randrange(3)}", rng.randrange(2))
                down.add(victim)
                a.instance_failed(victim, {}, [u for u in up() if u not in down])
            else:
                down = set()
                a.fill(up())
            for pair in a.pairs:
                assert pair.secondary is None or pair.secondary[0] != pair.primary[0]
                assert pair.secondary not in down
            assert len(a.pairs) == 6


def three_with_grace(grace_ms: float = 500) -> Assignment:
    a = Assignment(8, fresh_grace_ms=grace_ms)
    a.place({"n0": 1, "n1": 1, "n2": 1})     # pairs: 0 n0->n1, 1 n1->n2, 2 n2->n0
    return a


def both_suspected(a: Assignment, now_ms: float) -> None:
    """n1 and n2 found silent in one look (as the controller does: one node after the other)."""
    a.node_failed("n1", [("n0", 0)], now_ms)
    a.node_failed("n2", [("n0", 0)], now_ms)


def test_a_pair_whose_every_replica_is_suspected_waits_and_stays_if_its_primary_comes_back_alive():
    """Pair 1 (n1 -> n2) goes to n2 when n1 is found silent, then n2 is too: nobody is left, so it
    waits (stranded) instead of restarting fresh; n2 comes back as the same process within the grace
    (a stall, not a crash): the pair stays there, a take-over from its replica, its state kept."""
    a = three_with_grace()
    both_suspected(a, now_ms=1000)
    assert (a.pairs[1].primary, a.pairs[1].decision, a.pairs[1].stranded_ms) == (("n2", 0), UNKNOWN, 1000)
    assert a.pairs[2].primary == ("n0", 0) and a.pairs[0].primary == ("n0", 0)   # as before
    assert 1 not in a.fill([("n0", 0)], now_ms=1400)                             # still waiting
    a.fill([("n0", 0), ("n2", 0)], now_ms=1450, survivors=frozenset({("n2", 0)}))
    assert (a.pairs[1].primary, a.pairs[1].decision, a.pairs[1].stranded_ms) == (("n2", 0), UNKNOWN, None)
    assert a.pairs[1].secondary == ("n0", 0)        # picked when n1 went; it syncs once the routes are out
    request = a.request(5, {n: ("f", "r") for n in ("n0", "n1", "n2")})
    assert request["pairs"][1][4:] == [UNKNOWN, 5]  # one route set: n2 takes pair 1 over from its replica


def test_a_stranded_pair_restarts_fresh_when_the_grace_is_over_or_its_primary_came_back_as_a_new_process():
    a = three_with_grace()
    both_suspected(a, now_ms=0)
    assert a.fill([("n0", 0)], now_ms=499) == [] and a.pairs[1].primary == ("n2", 0)
    assert 1 in a.fill([("n0", 0)], now_ms=500)                                  # grace over: fresh, here
    assert (a.pairs[1].primary, a.pairs[1].decision) == (("n0", 0), FRESH)
    b = three_with_grace()
    both_suspected(b, now_ms=0)
    b.fill([("n0", 0), ("n2", 0)], now_ms=100, survivors=frozenset())           # n2 restarted: no state
    assert b.pairs[1].stranded_ms == 0                                            # no reason to keep it there
    b.fill([("n0", 0), ("n2", 0)], now_ms=600)
    assert b.pairs[1].decision == FRESH and b.pairs[1].stranded_ms is None


def test_workers_known_dead_never_strand_a_pair():
    """A FAILED notice (the process is gone, with its state): no grace, as without it."""
    c = Assignment(8, fresh_grace_ms=500)
    c.place({"n0": 2, "n1": 1})                                      # pair 1 (n0/1) has no secondary
    c.instance_failed(("n0", 1), {}, [("n0", 0), ("n1", 0)])
    assert (c.pairs[1].decision, c.pairs[1].stranded_ms) == (FRESH, None) and c.pairs[1].primary != ("n0", 1)


def test_a_secondary_picked_after_its_primary_fell_silent_is_no_replica():
    """n1 and n2 stall at t=900; n1 is found silent at 1000 (pair 1 goes to n2, its secondary, and gets
    a new secondary on n0), n2 only at 1300 (the controller was busy): n0 was picked after n2 fell
    silent, so n2 never synced it. Pair 1 strands on n2 instead of a take-over from an empty replica."""
    a = three_with_grace()
    a.node_failed("n1", [("n0", 0)], now_ms=1000, silent_since_ms=900)
    assert (a.pairs[1].primary, a.pairs[1].secondary) == (("n2", 0), ("n0", 0))
    a.node_failed("n2", [("n0", 0)], now_ms=1300, silent_since_ms=900)
    assert (a.pairs[1].primary, a.pairs[1].stranded_ms) == (("n2", 0), 1300)
    assert a.pairs[2].primary == ("n0", 0)          # n0 held pair 2's replica from the start: a take-over
