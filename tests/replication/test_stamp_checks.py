"""The stamp checks give the same answer on both of their paths (plain Python up to _SMALL, numpy above)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.replication.messages import _SMALL, _stamps_reason, make_stamps


def reference(pairs: list[tuple[int, int]]) -> str | None:
    if any(seq == 0 for _, seq in pairs):
        return "stamp with seq 0 (seqs start at 1)"
    if len(set(pairs)) != len(pairs):
        return "repeated stamp"
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), max_size=3 * _SMALL))
def test_both_paths_agree_with_the_definition(pairs):
    stamps = make_stamps([f for f, _ in pairs], [q for _, q in pairs])
    assert _stamps_reason(stamps) == reference(pairs)
    assert _stamps_reason(stamps, unique=False) == (None if all(q for _, q in pairs)
                                                     else "stamp with seq 0 (seqs start at 1)")


def test_a_repeat_far_apart_in_a_long_array_is_found():
    n = 5 * _SMALL
    flows = np.arange(n, dtype=np.uint64)
    seqs = np.ones(n, dtype=np.uint64)
    flows[-1] = 0   # (0, 1) again, first and last
    assert _stamps_reason(make_stamps(flows, seqs)) == "repeated stamp"
