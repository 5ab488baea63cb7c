"""Stamper: disjoint flow ids across units, per-flow counters from 1, symmetric keys, expiry."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.dataplane.packet import empty_batch
from deft.runtime.dataplane.stamper import Stamper, bucket_of, unit_of


def flows_batch(flow_of_packet: list[int]) -> np.ndarray:
    b = empty_batch(len(flow_of_packet))
    f = np.array(flow_of_packet, dtype=np.uint32)
    b["src_ip"] = 0x0A000000 + f
    b["dst_ip"] = 0xC6336401
    b["src_port"] = 1000 + f
    b["dst_port"] = 80
    b["proto"] = 17
    return b


def test_counters_start_at_one_per_flow_and_continue_across_batches():
    s = Stamper(0)
    b = flows_batch([1, 2, 1, 1, 3, 2])
    s.stamp(b)
    assert b["seq"].tolist() == [1, 1, 2, 3, 1, 2]
    b2 = flows_batch([2, 1, 4])
    s.stamp(b2)
    assert b2["seq"].tolist() == [3, 4, 1]
    ids = dict(zip([1, 2, 3], b["flow_id"][[0, 1, 4]].tolist()))
    assert b2["flow_id"][0] == ids[2] and b2["flow_id"][1] == ids[1]
    assert len(set(ids.values())) == 3


def test_reverse_direction_is_the_same_flow():
    s = Stamper(0)
    b = flows_batch([1, 1])
    b["src_ip"][1], b["dst_ip"][1] = b["dst_ip"][0], b["src_ip"][0]
    b["src_port"][1], b["dst_port"][1] = b["dst_port"][0], b["src_port"][0]
    s.stamp(b)
    assert b["flow_id"][0] == b["flow_id"][1]
    assert b["seq"].tolist() == [1, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=200), st.integers(2, 6))
def test_units_hand_out_disjoint_ids(packets, n_units):
    ids_per_unit = []
    for u in range(n_units):
        s = Stamper(u)
        b = flows_batch(packets)
        s.stamp(b)
        ids_per_unit.append(set(b["flow_id"].tolist()))
    for i in range(n_units):
        for j in range(i + 1, n_units):
            assert not ids_per_unit[i] & ids_per_unit[j]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=40), min_size=1, max_size=10))
def test_seq_is_the_running_count_of_each_flow(batches):
    s = Stamper(3)
    count: dict[int, int] = {}
    for flows in batches:
        b = flows_batch(flows)
        s.stamp(b)
        for f, seq in zip(flows, b["seq"].tolist()):
            count[f] = count.get(f, 0) + 1
            assert seq == count[f]


def test_idle_flows_expire_and_come_back_with_a_new_id():
    s = Stamper(0)
    b = flows_batch([1, 2])
    b["ts_ns"] = [100, 5_000]
    s.stamp(b)
    old = b["flow_id"].tolist()
    assert s.expire(now_ns=6_000, idle_ns=2_000) == 1
    assert len(s) == 1
    b2 = flows_batch([1, 2])
    b2["ts_ns"] = 7_000
    s.stamp(b2)
    assert b2["flow_id"][0] != old[0] and b2["seq"][0] == 1
    assert b2["flow_id"][1] == old[1] and b2["seq"][1] == 2


def test_table_grows_past_its_initial_capacity():
    s = Stamper(0, capacity=4)
    b = flows_batch(list(range(100)))
    s.stamp(b)
    assert len(set(b["flow_id"].tolist())) == 100 and (b["seq"] == 1).all()


def test_unit_and_bucket_spread():
    h = np.random.default_rng(1).integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    units = np.bincount(unit_of(h, 4), minlength=4)
    assert units.min() > 2000
    assert bucket_of(h, 4096).max() < 4096


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=8), min_size=1, max_size=12))
def test_small_and_large_batch_paths_stamp_alike(batches):
    """The per-packet loop for tiny batches and the numpy path give the same stamps."""
    import deft.runtime.dataplane.stamper as stamper_module

    def stamps(small_batch: int) -> list:
        saved, stamper_module.SMALL_BATCH = stamper_module.SMALL_BATCH, small_batch
        try:
            s = Stamper(1)
            out = []
            for flows in batches:
                b = flows_batch(flows)
                b["ts_ns"] = len(out)
                s.stamp(b)
                out.append((b["flow_id"].tolist(), b["seq"].tolist()))
            return out + [s.last_ts[: len(s)].tolist()]
        finally:
            stamper_module.SMALL_BATCH = saved

    assert stamps(0) == stamps(100)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 65535),
                          st.integers(0, 65535), st.sampled_from([1, 6, 17])), min_size=1, max_size=4))
def test_flow_keys_read_from_bytes_equal_the_numpy_keys(fields):
    """A flow keeps one id whether its packets come in small or large batches."""
    from deft.runtime.dataplane import stamper as stamper_module

    b = empty_batch(len(fields))
    b["src_ip"], b["dst_ip"], b["src_port"], b["dst_port"], b["proto"] = map(list, zip(*fields))
    saved, stamper_module.SMALL_BATCH = stamper_module.SMALL_BATCH, 0
    try:
        numpy_keys = stamper_module.flow_keys(b)
    finally:
        stamper_module.SMALL_BATCH = saved
    assert stamper_module._flow_keys_few(b) == numpy_keys
