"""The take-over's global-state pieces: the batch meta, reading a fence, rebuilding a batch from stamps."""

from __future__ import annotations

import numpy as np

from deft.runtime.consensus.kv import KVStateMachine, batch_entry, fence_entry
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.procs.pairslot import GLOBAL_WINDOW, session_of
from deft.runtime.procs.takeover import AppliedBatch, batch_meta, before, parse_fence, split_out


def records(stamps) -> np.ndarray:
    out = np.zeros(len(stamps), dtype=PACKET_DTYPE)
    out["flow_id"] = [f for f, _ in stamps]
    out["seq"] = [s for _, s in stamps]
    return out


def test_a_fence_on_the_dead_primary_gives_each_applied_batch_by_its_batch_id():
    """Batch t's entry is session slot session_of(prefix, t); the fence inverts that."""
    sm, prefix = KVStateMachine(), "pair1/n2.0/e3"
    batch = records([(7, 1), (9, 4), (7, 2)])
    meta = batch_meta(batch, [(0, 2, 0, 1), (2, 3, 1, 1)])
    assert meta == {"calls": [[2, 1], [3, 1]], "flows": [7, 9, 7], "seqs": [1, 4, 2]}
    for t in (5, 6, 9):   # 9 replaces 5 in slot 1: a fence reports the latest of each slot
        client, seq = session_of(prefix, t)
        sm.apply(batch_entry(client, seq, [("incr", "n", (t,))], meta if t == 9 else None), index=t)
    got = parse_fence(sm.apply(fence_entry("new/fence", 1, prefix), index=10))
    assert sorted(got) == [6, 9]
    assert got[9] == AppliedBatch([20], [[2, 1], [3, 1]], [7, 9, 7], [1, 4, 2])
    assert got[6] == AppliedBatch([11], None, None, None)
    assert 9 % GLOBAL_WINDOW == 5 % GLOBAL_WINDOW


def test_a_fence_result_that_makes_no_sense_gives_nothing():
    assert parse_fence("__stale__") == {}
    assert parse_fence({"a/x": {"seq": 1, "results": []}, "a/0": {"results": []}, "a/1": "junk"}) == {}


def test_split_out_takes_the_stamps_in_the_batch_order_and_counts_what_is_not_there():
    rest = records([(1, 5), (2, 1), (1, 6), (3, 1), (2, 2)])
    batch, left, missing = split_out(rest, [2, 1, 4], [1, 5, 1])
    assert list(zip(batch["flow_id"].tolist(), batch["seq"].tolist())) == [(2, 1), (1, 5)]
    assert list(zip(left["flow_id"].tolist(), left["seq"].tolist())) == [(1, 6), (3, 1), (2, 2)]
    assert missing == 1


def test_before_finds_what_precedes_the_rebuilt_batch_in_its_flows():
    batch = records([(1, 7), (2, 3)])
    rest = records([(1, 5), (1, 9), (2, 2), (3, 1)])
    assert before(rest, batch).tolist() == [True, False, True, False]
