"""The pieces a bucket move rests on (runtime/worker/bucketmove.py): a flow's bucket kept in its table
row and replicated with it, the ordering unit's guard for moved-in buckets and its per-bucket
hand-back of waiting packets, the NAT's lent rows that keep a moved flow's port from being handed
out twice (tests/unit/test_nat_ownership.py simulates many pairs), and the payloads' checks."""

from __future__ import annotations

import numpy as np
import pytest

from deft.nfs.base import FlowTable
from deft.nfs.nat import LENT
from deft.runtime.dataplane.ordering import OrderingUnit
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.worker.bucketmove import bucket_mask, pack, unpack

from .test_nf_nat import S, Flows, nat, out_pkts, run

B = 16


def packets(items) -> np.ndarray:
    """(flow, seq, key_hash) triples."""
    b = empty_batch(len(items))
    b["flow_id"], b["seq"], b["key_hash"] = zip(*items)
    return b


def test_a_tables_rows_know_their_bucket_and_carry_it_to_a_replica():
    table = FlowTable(np.dtype([("x", "u1")]))
    rows, _ = table.rows_for(np.array([10, 11, 12], dtype=np.uint64))
    table.key_hash[rows] = [3, 3 + B, 5]
    mask = bucket_mask(np.array([3]), B)
    assert sorted(table.flow_ids[table.rows_in_buckets(mask)].tolist()) == [10, 11]
    replica = FlowTable(np.dtype([("x", "u1")]))
    replica.import_records(table.export_rows(table.live_rows()))
    assert sorted(replica.flow_ids[replica.rows_in_buckets(mask)].tolist()) == [10, 11]


def test_a_guarded_bucket_does_not_adopt_an_unknown_flow_mid_stream():
    unit = OrderingUnit(PACKET_DTYPE, 16, adopt_unknown=True)
    unit.guarded = bucket_mask(np.array([2]), B)
    # flow 1 (bucket 2, moved in) arrives at seq 3 first: it waits for 1 and 2 (forwarded late)
    ready = unit.order(packets([(1, 3, 2), (7, 5, 4)]))
    assert ready["flow_id"].tolist() == [7]                 # flow 7 (not guarded) adopted at 5
    ready = unit.order(packets([(1, 1, 2), (1, 2, 2)]))
    assert list(zip(ready["flow_id"].tolist(), ready["seq"].tolist())) == [(1, 1), (1, 2), (1, 3)]


def test_waiting_packets_of_some_buckets_are_handed_back_in_seq_order():
    unit = OrderingUnit(PACKET_DTYPE, 16)
    unit.next_expected.update({1: 1, 2: 1})
    unit.order(packets([(1, 4, 2), (1, 3, 2), (2, 9, 5)]))
    taken = unit.take_pending(bucket_mask(np.array([2]), B))
    assert list(zip(taken["flow_id"].tolist(), taken["seq"].tolist())) == [(1, 3), (1, 4)]
    assert list(unit.pending) == [2] and unit.pending_count == 1


def test_a_moved_flows_port_stays_lent_at_its_old_pair_and_comes_home_with_it():
    nf, table = nat(ports=(10000, 10003), timeout=60)      # a 4-port pool
    flows = Flows()
    run(nf, table, flows.batch(out_pkts(4), ts=S))
    ports = sorted(table.state["port"][table.live_rows()].tolist())
    moved = table.row_of(flows.ids[next(iter(flows.ids))])
    port = int(table.state["port"][moved])
    record = table.export_rows(np.array([moved]))
    nf.moved_out(table, nf.movable(table, np.array([moved])))
    assert table.row_of(LENT | port) >= 0 and table.row_of(int(record["flow_id"][0])) < 0
    # long after every timeout, the lent row still holds the port: a new flow does not get it
    run(nf, table, flows.batch(out_pkts(3, first=1), ts=1000 * S))   # the other 3 flows, kept alive
    run(nf, table, flows.batch(out_pkts(1, first=50), ts=1001 * S))
    assert nf.stats["no_port"] == 1                                 # the pool is full
    assert sorted(table.state["port"][table.live_rows()].tolist()) == ports
    # the flow's bucket moves back with its row: the port comes home, the flow keeps it
    record["last_ns"] = record["state"]["last_ns"] = 1001 * S
    table.import_records(record)
    nf.moved_in(table, np.array([table.row_of(int(record["flow_id"][0]))]))
    assert table.row_of(LENT | port) < 0
    back = flows.batch(out_pkts(1), ts=1002 * S)
    run(nf, table, back)
    assert int(table.state["port"][table.row_of(back["flow_id"][0])]) == port


def test_payloads_round_trip_and_bad_ones_are_named():
    blob = pack(buckets=np.arange(3), flows=np.array([1, 2], dtype=np.uint64))
    got = unpack(blob, ("buckets", "flows"))
    assert got["buckets"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="lacks nexts"):
        unpack(blob, ("nexts",))
    with pytest.raises(ValueError, match="unreadable"):
        unpack(b"garbage", ("buckets",))
    with pytest.raises(ValueError, match="buckets must be"):
        bucket_mask(np.array([B]), B)
