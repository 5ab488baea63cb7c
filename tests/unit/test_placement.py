"""Placement: deterministic, secondaries never beside their primary, buckets spread evenly."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from deft.runtime.controller.placement import place
from deft.runtime.dataplane.routes import RouteSet


def nodes(*counts):
    return [(f"n{k}", f"tcp://127.0.0.1:{7200 + k}", c) for k, c in enumerate(counts)]


def test_three_nodes_pairs_and_buckets():
    req = place(nodes(2, 2, 2), 4096, epoch=7)
    assert req["epoch"] == 7 and len(req["pairs"]) == 6
    for pn, pi, sn, si in req["pairs"]:
        assert sn != pn and sn == (pn + 1) % 3 and si == pi
    counts = collections.Counter(req["buckets"])
    assert max(counts.values()) - min(counts.values()) <= 1
    RouteSet.from_request(req, 4096, {"n0": 2, "n1": 2, "n2": 2})  # the nodes' own validation accepts it


def test_one_node_has_no_secondaries():
    req = place(nodes(3), 64, epoch=2)
    assert all(p[2] == -1 for p in req["pairs"])


def test_uneven_instance_counts_leave_extra_primaries_without_a_secondary():
    req = place(nodes(1, 3), 64, epoch=2)
    assert [p for p in req["pairs"] if p[0] == 1] == [[1, 0, 0, 0], [1, 1, -1, -1], [1, 2, -1, -1]]


def test_same_input_same_routes_whatever_the_order():
    a = place(nodes(2, 1, 2), 128, 3)
    b = place(list(reversed(nodes(2, 1, 2))), 128, 3)
    assert a == b
    assert np.array_equal(a["buckets"], b["buckets"])


def test_no_nodes_is_an_error():
    with pytest.raises(ValueError):
        place([], 64, 1)
