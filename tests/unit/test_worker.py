"""The NF worker in-process, on real rings made by the supervisor (no child processes)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from deft.runtime.config import parse_config
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.worker.worker import Worker
from deft.runtime.ring import Ring
from deft.runtime.node.supervisor import Supervisor


class NeverStop:
    def __bool__(self) -> bool:
        return False


@pytest.fixture
def node(node_id):
    def make(**nf):
        restarted = nf.pop("_restarted", False)
        # shm egress: the output stays in the egress ring, where these tests look at it (a udp:// egress
        # without replication is sent by the worker itself: test_unreplicated_output_is_sent_by_the_worker)
        raw = {"node": {"id": node_id}, "egress": {"send_to": "shm://out"},
               "nf": {"kind": "flowcounter", "instances": 1, **nf}}
        sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
        sup.create_shared()
        made.append(sup)
        worker = Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=restarted)
        workers.append(worker)
        feed = Ring.attach(sup.topo.nf_ring(0), PACKET_DTYPE)
        out = Ring.attach(sup.topo.egress_ring(0), PACKET_DTYPE)
        rings.extend([feed, out])
        return worker, feed, out, worker.slots[0]

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
    worker, feed, out, slot = node(batch_size=4, flush_on_idle=False, flush_us=10_000_000)
    feed.push_some(packets([(1, 1), (1, 2), (2, 1)]))
    worker.pull()
    assert not slot.out.due(0) and len(out) == 0
    feed.push_some(packets([(2, 2), (1, 3)]))
    worker.pull()                      # takes only the room left: one packet
    assert slot.out.due(0)
    worker.release(slot)
    assert out.pop(10)["seq"].tolist() == [1, 2, 1, 2]
    assert len(feed) == 1


def test_flush_deadline_releases_a_partial_batch(node):
    worker, feed, out, slot = node(batch_size=64, flush_on_idle=False, flush_us=100)
    feed.push_some(packets([(1, 1)]))
    worker.pull()
    deadline = slot.out.deadline
    assert not slot.out.due(deadline - 1) and slot.out.due(deadline)


def test_an_nf_exception_costs_the_batch_not_the_worker(node):
    worker, feed, out, slot = node(batch_size=2)

    def broken(*args):
        raise RuntimeError("bug in the NF")

    slot.nf.process = broken
    feed.push_some(packets([(1, 1), (1, 2)]))
    worker.pull()
    worker.release(slot)
    worker.publish()
    assert worker.count["nf_errors"] == 2
    assert worker.count["dropped_by_nf"] == 2 and len(out) == 0


def test_out_of_order_arrivals_are_released_in_order(node):
    worker, feed, out, slot = node(batch_size=8)
    feed.push_some(packets([(1, 1)]))
    worker.pull()
    feed.push_some(packets([(1, 4), (1, 2), (2, 1), (1, 3)]))
    worker.pull()
    worker.release(slot)
    got = out.pop(10)
    assert list(zip(got["flow_id"].tolist(), got["seq"].tolist())) == [(1, 1), (1, 2), (2, 1), (1, 3), (1, 4)]


def test_a_flow_arriving_mid_stream_is_adopted_and_a_stale_gap_skipped(node):
    worker, feed, out, slot = node(batch_size=8, gap_timeout_ms=1)
    feed.push_some(packets([(3, 10), (3, 12)]))        # a flow whose route moved here; 11 went elsewhere
    worker.pull()
    slot.skip_gaps(time.monotonic_ns() + 5_000_000, worker.gap_ns)
    worker.release(slot)
    assert out.pop(10)["seq"].tolist() == [10, 12]
    assert slot.ordering.adopted == 1 and slot.ordering.gaps_skipped == 1


def test_a_restarted_worker_adopts_flows_at_their_current_seq(node):
    worker, feed, out, slot = node(batch_size=8, _restarted=True)
    feed.push_some(packets([(7, 40), (7, 41)]))
    worker.pull()
    worker.release(slot)
    assert out.pop(10)["seq"].tolist() == [40, 41]


def test_idle_flows_are_forgotten_by_packet_time(node):
    worker, feed, out, slot = node(batch_size=8, flow_idle_s=1.0)
    old, new = packets([(1, 1)]), packets([(2, 1)])
    old["ts_ns"], new["ts_ns"] = 1_000_000_000, 3_000_000_000
    feed.push_some(old)
    worker.pull()
    feed.push_some(new)
    worker.pull()
    slot.expire_idle(worker.idle_ns)
    worker.publish()
    assert worker.count["expired"] == 1
    assert 1 not in slot.table and 2 in slot.table
    assert 1 not in slot.ordering.next_expected and 2 in slot.ordering.next_expected
    records, removed = slot.table.take_changes()
    assert removed.tolist() == [1]            # the removal travels with the next state clock


def test_packets_of_a_pair_served_elsewhere_are_counted_not_processed(node):
    worker, feed, out, slot = node(batch_size=8)
    b = packets([(1, 1), (2, 1)])
    b["pair"] = [0, 5]                       # pair 5 is not this worker's (left over from a route change)
    feed.push_some(b)
    worker.pull()
    worker.release(slot)
    assert out.pop(10)["flow_id"].tolist() == [1]
    assert worker.count["not_mine"] == 1


def test_a_committed_release_interrupted_by_a_crash_is_finished_by_the_supervisor(node):
    from deft.runtime.dataplane.commit_record import CommitRecord

    worker, feed, out, slot = node(batch_size=8)
    batch = packets([(1, 1), (1, 2)])
    end = worker.egress.stage(batch)         # step 1: staged past the tail, invisible
    assert end is not None and len(out) == 0
    worker.record.releasing(0, 7, end)       # step 2: the record; the worker "dies" here
    record = CommitRecord.attach(worker.record.name)
    try:
        assert record.recover(out) == {0: 7}
        assert out.pop(10)["seq"].tolist() == [1, 2]      # released once, by the supervisor
        assert record.recover(out) == {}                  # and cleared for the successor
    finally:
        record.close()


def test_a_release_interrupted_before_its_record_is_not_published(node):
    from deft.runtime.dataplane.commit_record import CommitRecord

    worker, feed, out, slot = node(batch_size=8)
    worker.record.decided(0, 3)
    assert worker.egress.stage(packets([(1, 1)])) is not None   # step 1 only
    record = CommitRecord.attach(worker.record.name)
    try:
        assert record.recover(out) == {0: 3} and len(out) == 0  # batch 4 is replayed by the secondary
    finally:
        record.close()


def test_unreplicated_output_is_sent_by_the_worker(node_id):
    """No replication, a udp:// egress: the worker sends its output itself (no hop through the io)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        raw = {"node": {"id": node_id}, "egress": {"send_to": f"udp://127.0.0.1:{port}"},
               "nf": {"kind": "flowcounter", "instances": 1, "batch_size": 2}}
        sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
        sup.create_shared()
        worker = Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=False)
        feed = Ring.attach(sup.topo.nf_ring(0), PACKET_DTYPE)
        out = Ring.attach(sup.topo.egress_ring(0), PACKET_DTYPE)
        try:
            batch = packets([(1, 1), (2, 1)])
            batch["vni"] = 77
            batch["frame"][:, :60] = 7
            feed.push_some(batch)
            worker.pull()
            worker.release(worker.slots[0])
            got = [rx.recv(2048) for _ in range(2)]
            assert [len(d) for d in got] == [8 + 60] * 2 and got[0][4:7] == (77).to_bytes(3, "big")
            assert len(out) == 0 and worker.count["egress_sent"] == 2 and worker.count["released"] == 2
        finally:
            feed.close()
            out.close()
            worker.close()
            sup.zctx.term()
            sup.close_shared()


def replicating_worker(node_id: str):
    """(supervisor, worker 0, its ports) of a replicating one-worker node on loopback, no child processes."""
    from deft.tools.localnode import consecutive_ports

    ports = {name: consecutive_ports(1) for name in ("fabric", "replication", "copies")}
    raw = {"node": {"id": node_id, **{k: f"tcp://127.0.0.1:{p}" for k, p in ports.items()}},
           "egress": {"send_to": "shm://out"}, "nf": {"kind": "flowcounter", "instances": 1, "replicate": True}}
    sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
    sup.create_shared()
    return sup, Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=False), ports


def test_copies_wake_a_secondary_only_while_a_prepare_waits_for_them(node_id):
    """Copies from other nodes come to a PULL the worker drains every round but does not sleep on (the
    Prepare that needs them wakes it), except while a Prepare that came before them waits: then the
    copy ends the sleep at once, not the next 2PC tick."""
    import zmq

    from deft.runtime import wire

    sup, worker, ports = replicating_worker(node_id)
    push = sup.zctx.socket(zmq.PUSH)
    push.linger = 0
    try:
        push.connect(f"tcp://127.0.0.1:{ports['copies']}")
        copy = packets([(1, 1)])
        copy["dup"] = 1
        waiting = [False]
        worker.secondaries.needs_tick = lambda: waiting[0]
        for held in (False, True):
            waiting[0] = held
            worker.pull_duplicates()                      # drained: the socket is known empty
            push.send_multipart(wire.encode_packets(1, 0, copy, kind=wire.COPIES))
            t0 = time.monotonic()
            ready = worker.wait(300)
            slept = time.monotonic() - t0
            if held:
                assert worker.copies.sock in ready and slept < 0.25 and worker.count["woke_copies"] == 1
            else:
                assert worker.copies.sock not in ready and slept >= 0.25 and worker.count["woke_copies"] == 0
            assert worker.pull_duplicates() == 1          # the round takes it either way
    finally:
        push.close()
        worker.close()
        sup.zctx.term()
        sup.close_shared()


def test_a_worker_that_forwarded_packets_closes_at_once(node_id):
    """A worker that handed a pair over has forwarder sockets (forward.py); closing it must not wait on
    them. Its context was terminated before they were closed, and a terminated context waits for every
    socket: the worker hung on SIGTERM until its supervisor killed it 3 s later."""
    import threading

    import zmq

    from deft.runtime import wire
    from deft.tools.localnode import consecutive_ports

    sup, worker, _ = replicating_worker(node_id)
    try:
        nobody = f"tcp://127.0.0.1:{consecutive_ports(1)}"   # a node that is gone: the packets stay queued
        worker.forwarder.send(nobody, zmq.PUSH, wire.PACKETS, 1, 0, packets([(1, 1)]))
        assert worker.forwarder.socks
        closing = threading.Thread(target=worker.close, daemon=True)
        closing.start()
        closing.join(3)
        assert not closing.is_alive(), "Worker.close() hangs on the forwarder's sockets"
    finally:
        sup.zctx.term()
        sup.close_shared()
