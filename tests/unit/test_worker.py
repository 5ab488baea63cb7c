"""The NF worker in-process, on real rings made by the supervisor (no child processes)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from deft.runtime.config import parse_config
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.procs.worker import Worker
from deft.runtime.ring import Ring
from deft.runtime.supervisor import Supervisor


class NeverStop:
    def __bool__(self) -> bool:
        return False


@pytest.fixture
def node(node_id):
    def make(**nf):
        restarted = nf.pop("_restarted", False)
        raw = {"node": {"id": node_id}, "nf": {"kind": "flowcounter", "instances": 1, **nf}}
        sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
        sup.create_shared()
        made.append(sup)
        worker = Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=restarted)
        workers.append(worker)
        feed = Ring.attach(sup.topo.nf_ring(0, 0), PACKET_DTYPE)
        out = Ring.attach(sup.topo.egress_ring(0), PACKET_DTYPE)
        rings.extend([feed, out])
        return worker, feed, out

    made, workers, rings = [], [], []
    yield make
    for r in rings:
        r.close()
    for w in workers:
        w.close()
    for sup in made:
        sup.zctx.term()
        sup.close_shared()


def packets(flow_seq: list[tuple[int, int]]) -> np.ndarray:
    b = empty_batch(len(flow_seq))
    b["flow_id"], b["seq"] = zip(*flow_seq)
    b["frame_len"] = 60
    return b


def test_releases_when_the_batch_is_full(node):
    worker, feed, out = node(batch_size=4, flush_on_idle=False, flush_us=10_000_000)
    feed.push_some(packets([(1, 1), (1, 2), (2, 1)]))
    worker.pull()
    assert not worker.out.due(0) and len(out) == 0
    feed.push_some(packets([(2, 2), (1, 3)]))
    worker.pull()                      # takes only the room left: one packet
    assert worker.out.due(0)
    worker.release()
    assert out.pop(10)["seq"].tolist() == [1, 2, 1, 2]
    assert len(feed) == 1


def test_flush_deadline_releases_a_partial_batch(node):
    worker, feed, out = node(batch_size=64, flush_on_idle=False, flush_us=100)
    feed.push_some(packets([(1, 1)]))
    worker.pull()
    deadline = worker.out.deadline
    assert not worker.out.due(deadline - 1) and worker.out.due(deadline)


def test_an_nf_exception_costs_the_batch_not_the_worker(node):
    worker, feed, out = node(batch_size=2)

    def broken(*args):
        raise RuntimeError("bug in the NF")

    worker.nf.process = broken
    feed.push_some(packets([(1, 1), (1, 2)]))
    worker.pull()
    worker.release()
    assert worker.count["nf_errors"] == 2
    assert worker.count["dropped_by_nf"] == 2 and len(out) == 0


def test_out_of_order_arrivals_are_released_in_order(node):
    worker, feed, out = node(batch_size=8)
    feed.push_some(packets([(1, 1)]))
    worker.pull()
    feed.push_some(packets([(1, 4), (1, 2), (2, 1), (1, 3)]))
    worker.pull()
    worker.release()
    got = out.pop(10)
    assert list(zip(got["flow_id"].tolist(), got["seq"].tolist())) == [(1, 1), (1, 2), (2, 1), (1, 3), (1, 4)]


def test_a_flow_arriving_mid_stream_is_adopted_and_a_stale_gap_skipped(node):
    worker, feed, out = node(batch_size=8, gap_timeout_ms=1)
    feed.push_some(packets([(3, 10), (3, 12)]))        # a flow whose route moved here; 11 went elsewhere
    worker.pull()
    worker.skip_gaps(time.monotonic_ns() + 5_000_000)
    worker.release()
    assert out.pop(10)["seq"].tolist() == [10, 12]
    assert worker.ordering.adopted == 1 and worker.ordering.gaps_skipped == 1


def test_a_restarted_worker_adopts_flows_at_their_current_seq(node):
    worker, feed, out = node(batch_size=8, _restarted=True)
    feed.push_some(packets([(7, 40), (7, 41)]))
    worker.pull()
    worker.release()
    assert out.pop(10)["seq"].tolist() == [40, 41]


def test_idle_flows_are_forgotten_by_packet_time(node):
    worker, feed, out = node(batch_size=8, flow_idle_s=1.0)
    old, new = packets([(1, 1)]), packets([(2, 1)])
    old["ts_ns"], new["ts_ns"] = 1_000_000_000, 3_000_000_000
    feed.push_some(old)
    worker.pull()
    feed.push_some(new)
    worker.pull()
    worker.expire_idle(now_ns=10**18)
    assert worker.count["expired"] == 1
    assert 1 not in worker.table and 2 in worker.table
    assert 1 not in worker.ordering.next_expected and 2 in worker.ordering.next_expected
    records, removed = worker.table.take_changes()
    assert removed.tolist() == [1]            # the removal travels with the next state clock
