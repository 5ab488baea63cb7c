"""plan_roles: what a route set asks of one worker, checked case by case and over random route sets."""

from __future__ import annotations

from deft.runtime.dataplane.routes import NONE
from deft.runtime.worker.role_plan import BeSecondary, DropSecondary, Replicate, Retire, Serve, plan_roles
from hypothesis import given
from hypothesis import strategies as st

ME, INDEX = 1, 0


def row(primary, secondary=(NONE, NONE), decision=-2, gen=1):
    return [*primary, *secondary, decision, gen]


def test_a_new_pair_is_served_then_replicated_and_the_worker_is_no_secondary_of_it():
    plan = plan_roles([row((ME, INDEX), (2, 0), decision=7, gen=3)], ME, INDEX, set(), replicating=True)
    assert plan == [Serve(0, 7), Replicate(0, (2, 0, 3)), DropSecondary(0)]


def test_a_served_pair_is_only_replicated_again():
    plan = plan_roles([row((ME, INDEX), (2, 0))], ME, INDEX, {0}, replicating=True)
    assert plan == [Replicate(0, (2, 0, 1)), DropSecondary(0)]


def test_a_pair_handed_to_its_secondary_is_retired_and_this_worker_becomes_its_secondary():
    plan = plan_roles([row((2, 0), (ME, INDEX), gen=4)], ME, INDEX, {0}, replicating=True)
    assert plan == [Retire(0, True), BeSecondary(0, (2, 0, 4))]


def test_a_restarted_worker_does_not_take_up_a_pair_its_secondary_is_taking_over():
    rows = [row((ME, INDEX), (2, 0)), row((ME, INDEX))]
    plan = plan_roles(rows, ME, INDEX, set(), replicating=True, skip_new_with_secondary=True)
    assert plan == [Serve(1, -2), Replicate(1, (NONE, NONE, 1)), DropSecondary(1)]


def test_pairs_beyond_the_route_set_are_retired_and_nothing_is_replicated_without_replication():
    plan = plan_roles([row((ME, INDEX))], ME, INDEX, {0, 3, 5}, replicating=False)
    assert plan == [Retire(3, False), Retire(5, False)]


nodes = st.integers(0, 2)
instances = st.integers(0, 1)
# as set_routes accepts them: a pair's secondary is on another node than its primary, or there is none
rows_st = st.lists(st.tuples(nodes, instances, st.one_of(st.just(NONE), nodes), instances,
                             st.integers(-2, 9), st.integers(1, 9)).filter(lambda r: r[0] != r[2]), max_size=8)


@given(rows_st, st.sets(st.integers(0, 9)), st.booleans(), st.booleans())
def test_every_pair_ends_in_the_roles_the_routes_give_this_worker(rows, serving, replicating, skip):
    rows = [list(r) for r in rows]
    plan = plan_roles(rows, ME, INDEX, serving, replicating=replicating, skip_new_with_secondary=skip)
    served = set(serving)
    secondary_of: set[int] = set()
    for change in plan:
        if isinstance(change, Serve):
            assert change.pair not in served
            served.add(change.pair)
        elif isinstance(change, Retire):
            served.remove(change.pair)
        elif isinstance(change, Replicate):
            assert change.pair in served
        elif isinstance(change, BeSecondary):
            assert change.pair not in served   # never primary and secondary of one pair
            secondary_of.add(change.pair)
    for p, (pn, pi, sn, si, decision, gen) in enumerate(rows):
        mine = (pn, pi) == (ME, INDEX)
        skipped = mine and skip and sn != NONE and p not in serving
        assert (p in served) == (mine and not skipped), p
        if replicating and not skipped:
            assert (p in secondary_of) == ((sn, si) == (ME, INDEX)), p
            assert sum(isinstance(c, BeSecondary | DropSecondary) and c.pair == p for c in plan) == 1
    assert all(p < len(rows) for p in served)
