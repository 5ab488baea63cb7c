"""The stamping unit's hand-off: prefix back-pressure, and stuck instances skipped unstamped."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from deft.runtime.procs.unit import StallWatch, fitting_prefix, plan_handoff, split_by_instance


def test_prefix_stops_at_the_first_packet_that_does_not_fit():
    instance = np.array([0, 1, 0, 0, 1, 1])
    assert fitting_prefix(instance, [10, 10]) == 6
    assert fitting_prefix(instance, [2, 10]) == 3      # the third packet for 0 does not fit
    assert fitting_prefix(instance, [10, 1]) == 4
    assert fitting_prefix(instance, [0, 10]) == 0


def test_without_stuck_instances_the_plan_is_the_prefix():
    picked, consumed = plan_handoff(np.array([0, 1, 0, 1]), [1, 5], set())
    assert picked.tolist() == [0, 1] and consumed == 2


def test_stuck_instance_packets_are_consumed_unstamped():
    instance = np.array([0, 1, 0, 1, 1])
    picked, consumed = plan_handoff(instance, [0, 5], {0})
    assert picked.tolist() == [1, 3, 4] and consumed == 5


def test_stuck_skip_still_respects_room_of_the_others():
    instance = np.array([1, 0, 1, 1, 0])
    picked, consumed = plan_handoff(instance, [0, 2], {0})
    assert picked.tolist() == [0, 2] and consumed == 3   # packet 3 (instance 1) waits; 1 was dropped


def test_stall_watch_needs_a_full_ring_for_the_whole_period():
    watch = StallWatch(stall_s=1.0)
    assert watch.stuck([0, 3], now=10.0) == set()
    assert watch.stuck([0, 3], now=10.5) == set()
    assert watch.stuck([0, 3], now=11.0) == {0}
    assert watch.stuck([1, 3], now=11.1) == set()      # room again: the clock restarts
    assert watch.stuck([0, 0], now=11.2) == set()


@given(st.lists(st.integers(0, 7), max_size=12))
def test_split_by_instance_names_each_instance_with_packets_once(instance):
    parts = split_by_instance(np.array(instance, dtype=np.int64), 8)
    assert [k for k, _ in parts] == sorted(set(instance))
    for k, idx in parts:
        assert idx.tolist() == [j for j, i in enumerate(instance) if i == k]
