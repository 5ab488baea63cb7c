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


def test_a_full_table_leaves_new_flows_unstamped_and_counts_them():
    s = Stamper(0, capacity=4)
    b = flows_batch([0, 1, 2, 3, 4, 0, 5])
    ok = s.stamp(b)
    assert ok.tolist() == [True, True, True, True, False, True, False]
    assert b["seq"][ok].tolist() == [1, 1, 1, 1, 2]
    assert s.table_full == 2 and len(s) == 4


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
            return out + [s.table.slots["last_ts"][: len(s)].tolist()]
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


def test_state_in_a_shared_buffer_survives_a_new_stamper():
    """A restarted unit attached to the same table continues every flow (same id, next seq)."""
    from deft.runtime.dataplane.stamper import StamperTable

    buf = bytearray(StamperTable.nbytes(64))
    first = Stamper(2, table=StamperTable.over(buf, 64, fresh=True))
    b = flows_batch([1, 2, 1])
    first.stamp(b, ring_head=0)
    first.commit()
    second = Stamper(2, table=StamperTable.over(buf, 64, fresh=False))
    b2 = flows_batch([2, 1, 9])
    second.stamp(b2, ring_head=3)
    assert b2["flow_id"][:2].tolist() == [b["flow_id"][1], b["flow_id"][0]]
    assert b2["seq"].tolist() == [2, 3, 1]
    assert b2["flow_id"][2] not in b["flow_id"].tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=20), min_size=2, max_size=8),
       st.integers(0, 7), st.booleans())
def test_recovery_restamps_an_unreleased_batch_identically(batches, crash_at, released):
    """Crash after stamping batch k (before commit): recovery rolls back or keeps, then all goes on alike."""
    from deft.runtime.dataplane.stamper import StamperTable

    crash_at %= len(batches)
    reference = Stamper(1, capacity=256)
    want = []
    for flows in batches:
        b = flows_batch(flows)
        reference.stamp(b)
        want.append(list(zip(b["flow_id"].tolist(), b["seq"].tolist())))

    buf = bytearray(StamperTable.nbytes(256))
    s = Stamper(1, table=StamperTable.over(buf, 256, fresh=True))
    head, got = 0, []
    for k, flows in enumerate(batches):
        b = flows_batch(flows)
        s.stamp(b, ring_head=head)
        if k == crash_at:
            if released:  # the batch was handed on and released: it stands
                got.append(list(zip(b["flow_id"].tolist(), b["seq"].tolist())))
                head += len(flows)
            s = Stamper(1, table=StamperTable.over(buf, 256, fresh=False))   # the restarted unit
            assert s.recover(ring_head=head) == ("kept" if released else "rolled back")
            if released:
                continue
            b = flows_batch(flows)
            s.stamp(b, ring_head=head)
        got.append(list(zip(b["flow_id"].tolist(), b["seq"].tolist())))
        head += len(flows)
        s.commit()
    assert got == want
