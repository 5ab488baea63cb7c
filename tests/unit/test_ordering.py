"""Ordering unit: any arrival order of a flow's packets comes out in stamp order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.dataplane.ordering import OrderingUnit
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch


def packets(pairs) -> np.ndarray:
    b = empty_batch(len(pairs))
    if pairs:
        b["flow_id"], b["seq"] = zip(*pairs)
    return b


def feed(unit: OrderingUnit, arrivals, batch_size: int) -> list[tuple[int, int]]:
    out = []
    for i in range(0, len(arrivals), batch_size):
        ready = unit.order(packets(arrivals[i: i + batch_size]))
        out.extend(zip(ready["flow_id"].tolist(), ready["seq"].tolist()))
    return out


def per_flow(seq_pairs):
    flows: dict[int, list[int]] = {}
    for f, s in seq_pairs:
        flows.setdefault(f, []).append(s)
    return flows


def test_in_order_batch_is_returned_without_copy():
    unit = OrderingUnit(PACKET_DTYPE, 16)
    b = packets([(1, 1), (2, 1), (1, 2)])
    assert unit.order(b) is b


def test_gap_waits_then_drains_in_place():
    unit = OrderingUnit(PACKET_DTYPE, 16)
    assert feed(unit, [(1, 2), (1, 3), (2, 1)], 8) == [(2, 1)]
    assert unit.pending_count == 2
    assert feed(unit, [(1, 1), (1, 5), (1, 4)], 8) == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]
    assert unit.pending_count == 0


def test_processed_and_pending_duplicates_are_dropped_and_counted():
    unit = OrderingUnit(PACKET_DTYPE, 16)
    feed(unit, [(1, 1), (1, 2)], 8)
    assert feed(unit, [(1, 1), (1, 4), (1, 4)], 8) == []
    assert unit.stale == 1 and unit.duplicate == 1
    assert feed(unit, [(1, 3)], 8) == [(1, 3), (1, 4)]


def test_full_pending_store_drops_and_counts_instead_of_growing():
    unit = OrderingUnit(PACKET_DTYPE, 2)
    feed(unit, [(1, 5), (1, 6), (1, 7), (2, 9)], 8)
    assert unit.overflow == 2 and unit.pending_count == 2


def test_a_flow_never_waits_for_a_packet_the_full_store_dropped():
    unit = OrderingUnit(PACKET_DTYPE, 2)
    assert feed(unit, [(1, 3), (1, 4), (1, 5), (2, 2)], 8) == []   # 5 and (2, 2) find the store full
    assert unit.overflow == 2
    # the gaps fill: flow 1 goes on past 5, flow 2 past 2, without waiting for them
    assert feed(unit, [(1, 1), (1, 2), (1, 6), (2, 1), (2, 3)], 8) == \
        [(1, 1), (1, 2), (1, 3), (1, 4), (1, 6), (2, 1), (2, 3)]
    assert unit.pending_count == 0 and not unit.waiting_since and not unit.lost
    assert unit.order(b := packets([(1, 7), (2, 4)])) is b   # and the fast path is back


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.integers(1, 30), st.integers(1, 12), st.integers(1, 8))
def test_a_small_store_loses_only_what_it_counts_and_never_stalls(seed, n_flows, per_flow_n, capacity, batch_size):
    rng = random.Random(seed)
    # each flow's packets arrive a little out of order (as after a move or a take-over)
    arrivals = []
    for f in range(1, n_flows + 1):
        seqs = list(range(1, per_flow_n + 1))
        for i in range(len(seqs) - 1):
            if rng.random() < 0.3:
                seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        arrivals.append([(f, s) for s in seqs])
    merged = []
    while any(arrivals):
        merged.append(rng.choice([a for a in arrivals if a]).pop(0))
    unit = OrderingUnit(PACKET_DTYPE, capacity)
    out = feed(unit, merged, batch_size)
    assert len(out) + unit.overflow == len(merged) and unit.pending_count == 0   # nothing left waiting
    for f, seqs in per_flow(out).items():
        assert seqs == sorted(seqs)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.integers(1, 25), st.integers(1, 40))
def test_random_permutations_come_out_in_order(seed, n_flows, per_flow_n, batch_size):
    rng = random.Random(seed)
    arrivals = [(f, s) for f in range(1, n_flows + 1) for s in range(1, per_flow_n + 1)]
    rng.shuffle(arrivals)
    unit = OrderingUnit(PACKET_DTYPE, len(arrivals))
    out = feed(unit, arrivals, batch_size)
    assert len(out) == len(arrivals)
    for f, seqs in per_flow(out).items():
        assert seqs == list(range(1, per_flow_n + 1))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_duplicates_and_stale_copies_never_come_out_twice(seed):
    rng = random.Random(seed)
    arrivals = [(1, s) for s in range(1, 30)] + [(2, s) for s in range(1, 30)]
    arrivals += rng.sample(arrivals, 20)  # duplicates, some arrive after the original was processed
    rng.shuffle(arrivals)
    unit = OrderingUnit(PACKET_DTYPE, 200)
    out = feed(unit, arrivals, 7)
    assert per_flow(out) == {1: list(range(1, 30)), 2: list(range(1, 30))}
    assert unit.stale + unit.duplicate == 20


def test_forget_releases_pending_slots():
    unit = OrderingUnit(PACKET_DTYPE, 4)
    feed(unit, [(1, 3), (1, 4)], 8)
    unit.forget([1])
    assert unit.pending_count == 0 and 1 not in unit.next_expected


@pytest.mark.parametrize("n", [1, 64, 500])
def test_batch_sizes(n):
    unit = OrderingUnit(PACKET_DTYPE, 8)
    arrivals = [(f % 7, f // 7 + 1) for f in range(n)]
    assert len(feed(unit, arrivals, 64)) == n


def test_adopting_unknown_flows_starts_them_at_their_first_seq():
    unit = OrderingUnit(PACKET_DTYPE, 16, adopt_unknown=True)
    assert feed(unit, [(5, 40), (5, 41), (6, 1)], 8) == [(5, 40), (5, 41), (6, 1)]
    assert unit.adopted == 2
    assert feed(unit, [(5, 39)], 8) == [] and unit.stale == 1


def test_a_gap_that_does_not_fill_is_skipped_after_the_timeout():
    unit = OrderingUnit(PACKET_DTYPE, 16)
    feed(unit, [(1, 1)], 8)
    assert unit.order(packets([(1, 4), (1, 5), (2, 1)]), now_ns=1_000)["flow_id"].tolist() == [2]
    assert len(unit.skip_gaps(now_ns=50_000, max_wait_ns=100_000)) == 0
    out = unit.skip_gaps(now_ns=101_000, max_wait_ns=100_000)
    assert list(zip(out["flow_id"].tolist(), out["seq"].tolist())) == [(1, 4), (1, 5)]
    assert unit.gaps_skipped == 1 and unit.pending_count == 0 and not unit.waiting_since
    assert feed(unit, [(1, 2), (1, 6)], 8) == [(1, 6)]   # the skipped seqs went elsewhere: stale if they come


def test_take_pending_hands_out_every_waiting_packet_in_seq_order_and_frees_the_store():
    """A pair leaving a worker: what waited for a gap goes on (forward.py), nothing stays behind."""
    from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch

    o = OrderingUnit(PACKET_DTYPE, 16)
    o.next_expected = {1: 1, 2: 4}
    b = empty_batch(4)
    b["flow_id"], b["seq"] = [1, 1, 2, 1], [3, 2, 5, 5]
    assert len(o.order(b, 1)) == 0 and o.pending_count == 4
    taken = o.take_pending()
    assert list(zip(taken["flow_id"].tolist(), taken["seq"].tolist())) == [(1, 2), (1, 3), (1, 5), (2, 5)]
    assert o.pending_count == 0 and not o.waiting_since and len(o.take_pending()) == 0
