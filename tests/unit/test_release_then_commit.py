"""A replicated batch's Commit reaches the secondary only after the egress SENT the batch.

The rare loss of the leader-kill test (tests/integration/test_global_nf.py): a
primary published a decided batch to its egress ring, told its secondary
"committed" at once, and its node was SIGKILLed before the egress process had
sent the batch. The secondary applied the batch as released, so its take-over
neither replayed nor rebuilt it: one packet per flow of that batch was lost
(the batch just before the kill; with small batches, one client packet each).
Reproduced with the Commit flushed at publish (the pre-7875e5e order): 2 runs
in 36 lost packets, each time a batch its secondary had committed and the
killed primary had published a few ms before the kill.

This pins the order at the worker level (``PrimaryRole.note_sent`` tells the
core what the egress has sent, ``PrimaryReplicator.output_sent``): published
but unsent, nothing that commits the batch (a Commit, a retransmitted Commit,
the next Prepare's ``committed_upto``) leaves the primary.
"""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest

from deft.runtime.config import parse_config
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.worker.replica import PrimaryRole
from deft.runtime.worker.worker import Worker
from deft.runtime.replication import PrimaryReplicator, SecondaryReplica
from deft.runtime.replication.driver import Router, SecondaryLink
from deft.runtime.replication.messages import stamps_of
from deft.runtime.ring import Ring
from deft.runtime.node.supervisor import Supervisor
from deft.tools.localnode import consecutive_ports, free_port

EPOCH = 3


class NeverStop:
    def __bool__(self) -> bool:
        return False


def packets(flow_seq: list[tuple[int, int]]) -> np.ndarray:
    b = empty_batch(len(flow_seq))
    b["flow_id"], b["seq"] = zip(*flow_seq)
    b["frame_len"] = 60
    return b


@pytest.fixture
def replicated(node_id):
    """A worker (primary of pair 0) whose PrimaryRole talks to an in-test secondary over loopback;
    its output goes to a shm:// sink, whose egress ring the test drains (the io's part)."""
    yield from make_replicated(node_id, "shm://out")


@pytest.fixture
def udp_sink():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


@pytest.fixture
def sending_itself(node_id, udp_sink):
    """The same with a udp:// egress: the worker sends its own output (from its egress ring)."""
    yield from make_replicated(node_id, f"udp://127.0.0.1:{udp_sink.getsockname()[1]}", with_sup=True)


def make_replicated(node_id, send_to: str, with_sup: bool = False):
    raw = {"node": {"id": node_id, "replication": f"tcp://127.0.0.1:{consecutive_ports()}",
                    "fabric": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
           "egress": {"send_to": send_to},
           "nf": {"kind": "flowcounter", "instances": 1, "replicate": True, "batch_size": 8}}
    sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
    sup.create_shared()
    worker = Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=False)
    feed = Ring.attach(sup.topo.nf_ring(0), PACKET_DTYPE)
    out = Ring.attach(sup.topo.egress_ring(0), PACKET_DTYPE)
    router = Router(worker.zctx, "tcp://127.0.0.1:*")
    secondary = SecondaryLink(router, SecondaryReplica(EPOCH, 0, worker.new_table()), worker.codec)
    slot = worker.slots[0]
    slot.role = PrimaryRole(worker, slot, PrimaryReplicator(EPOCH, 0), router.endpoint, ("s", 0, EPOCH))
    try:
        yield (worker, feed, out, slot, secondary) + ((sup,) if with_sup else ())
    finally:
        secondary.close()
        router.close()
        feed.close()
        out.close()
        worker.close()
        sup.zctx.term()
        sup.close_shared()


def submit(worker, feed, slot, secondary, flow_seq) -> None:
    """The switch's two copies (the secondary's first), then the primary processes and submits the batch."""
    batch = packets(flow_seq)
    secondary.on_packets(stamps_of(batch), [r.tobytes() for r in batch])
    feed.push_some(batch)
    worker.pull()
    worker.release(slot)


def spin(slot, secondary, until, seconds: float = 5.0) -> None:
    """Both sides' polls and ticks, until ``until()`` or for ``seconds`` (``until=None``)."""
    deadline = time.monotonic() + seconds
    while until is None or not until():
        if time.monotonic() >= deadline:
            assert until is None, "timed out"
            return
        secondary.poll_once(1)
        secondary.tick()
        slot.role.poll()
        slot.role.note_sent(slot.role.worker.egress.popped)   # what the worker loop does every round
        slot.role.tick()   # retransmits must wait like the Commit
        slot.role.maybe_commit(time.monotonic_ns() + 10**12)   # as if every quiet spell were over


def test_a_released_batch_is_committed_to_the_secondary_only_once_the_egress_sent_it(replicated):
    worker, feed, out, slot, secondary = replicated
    submit(worker, feed, slot, secondary, [(1, 1), (2, 1)])
    spin(slot, secondary, lambda: len(out) == 2)       # voted, decided, released (published)
    assert secondary.core.prepared == 1 and slot.role.unsent     # released, not yet sent
    # the egress has not sent it: a node crash now loses it unless the secondary replays it
    submit(worker, feed, slot, secondary, [(1, 2)])           # its Prepare goes at once, committed_upto=0
    spin(slot, secondary, None, seconds=0.3)
    assert secondary.core.committed == 0, "the secondary heard 'committed' before the egress sent the batch"
    assert secondary.core.prepared == 2 and len(out) == 3    # batch 2 decided and published too, unsent
    sent = out.pop(10)                                        # the egress sends both
    assert sent["seq"].tolist() == [1, 1, 2]
    spin(slot, secondary, lambda: secondary.core.committed == 2)   # a lazy Commit once idle


def test_a_node_crash_between_publish_and_send_leaves_the_batch_to_the_replay(replicated):
    """The take-over of a secondary that never heard the Commit replays (and releases) the batch."""
    worker, feed, out, slot, secondary = replicated
    submit(worker, feed, slot, secondary, [(5, 1), (6, 1), (5, 2)])
    spin(slot, secondary, lambda: len(out) == 3)
    spin(slot, secondary, None, seconds=0.2)
    # the primary's node dies here, its egress ring unsent; the secondary takes over (decision unknown)
    plan = secondary.core.take_over(None)
    assert [(r.batch, r.release) for r in plan.replays] == [(1, True)]
    assert sorted(len(p) for p in plan.replays[0].payloads) == [PACKET_DTYPE.itemsize] * 3


def received(sock, n: int) -> list[bytes]:
    return [sock.recv(4096) for _ in range(n)]


def test_a_worker_sending_itself_commits_once_the_datagrams_left(sending_itself, udp_sink):
    """udp:// egress: the Release sends the batch from the egress ring at once; the ring's head
    passes it, and only then may the secondary hear 'committed'."""
    worker, feed, out, slot, secondary, _ = sending_itself
    submit(worker, feed, slot, secondary, [(1, 1), (2, 1), (1, 2)])
    spin(slot, secondary, lambda: worker.count["egress_sent"] == 3)
    assert len(received(udp_sink, 3)) == 3
    assert len(out) == 0 and out.popped == 3           # released datagram by datagram
    spin(slot, secondary, lambda: secondary.core.committed == 1)


def test_what_a_dead_worker_left_in_its_egress_ring_is_sent_by_the_supervisor(sending_itself, udp_sink):
    """A worker killed between publishing a decided batch and sending all of it: the supervisor
    sends the rest (once) before it reports the death, so the pair's new primary comes after it."""
    worker, feed, out, slot, secondary, sup = sending_itself
    left = packets([(7, 1), (8, 1), (7, 2)])
    end = worker.egress.stage(left, None)
    worker.record.releasing(0, 1, end)
    worker.egress.publish_to(end)                      # killed here: published, nothing sent
    sup.finish_releases(0)
    got = received(udp_sink, 3)
    assert len(got) == 3 and len(out) == 0
    udp_sink.settimeout(0.2)
    with pytest.raises(socket.timeout):
        udp_sink.recv(4096)                            # and nothing twice
