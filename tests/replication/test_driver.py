"""The ZeroMQ replication driver over real loopback sockets, one process, every loop time-bounded.

A primary (DEALER) and a secondary (ROUTER) run the model NF of the
simulation; a shim between them can drop messages or inject garbage toward
the primary, and a rogue DEALER injects garbage at the ROUTER.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Collection, Iterator

import numpy as np
import pytest
import zmq
from deft.runtime.replication import (
    Commit,
    Delta,
    Missing,
    PrimaryReplicator,
    Refused,
    Release,
    SecondaryReplica,
    Vote,
    WriteDecision,
    make_stamps,
)
from deft.runtime.replication.codec import Codec
from deft.runtime.replication.driver import PrimaryLink, Router, SecondaryLink

from .conftest import TEST_TIMEOUT
from .helpers import EPOCH, EXPORT, PAIR, prepare
from .model import ModelNF, make_input, new_table, table_state

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)   # a missed deadline in a socket loop fails fast

CODEC = Codec(EXPORT)
BATCH = 4
TICK_S = 0.005     # wall time per logical tick in these tests


class Model:
    """The primary's NF and its input, cut into batches of BATCH packets."""

    def __init__(self, n_batches: int, seed: int = 1) -> None:
        packets = make_input(random.Random(seed), n_flows=n_batches * 2, max_len=6)
        assert len(packets) >= n_batches * BATCH
        self.batches = [packets[i * BATCH:(i + 1) * BATCH] for i in range(n_batches)]
        self.table, self.nf = new_table(), ModelNF()
        self.next_expected: dict[int, int] = {}

    def stamps(self, t: int) -> np.ndarray:
        return make_stamps([p.flow for p in self.batches[t - 1]], [p.seq for p in self.batches[t - 1]])

    def payloads(self, t: int) -> tuple[bytes, ...]:
        return tuple(p.value.to_bytes(8, "little") for p in self.batches[t - 1])

    def process(self, t: int) -> tuple[np.ndarray, Delta]:
        packets = self.batches[t - 1]
        self.nf.process(self.table, packets)
        for p in packets:
            self.next_expected[p.flow] = p.seq + 1
        stamps = self.stamps(t)
        return stamps, Delta.capture(self.table, self.next_expected, stamps)


class Shim:
    """A man in the middle (ROUTER facing the primary, DEALER facing the secondary) that drops or injects."""

    def __init__(self, make_socket: Callable[..., zmq.Socket], bind: Callable[[zmq.Socket], str],
                 secondary_endpoint: str, drop_to_secondary: int = 0, drop_to_primary: int = 0) -> None:
        self.front = make_socket(zmq.ROUTER)
        self.endpoint = bind(self.front)
        self.back = make_socket(zmq.DEALER)
        self.back.connect(secondary_endpoint)
        self.drop = {"to_secondary": drop_to_secondary, "to_primary": drop_to_primary}
        self.primary_id: bytes | None = None

    def pump(self) -> None:
        while self.front.poll(0):
            identity, *frames = self.front.recv_multipart()
            self.primary_id = identity
            if not self._dropped("to_secondary"):
                self.back.send_multipart(frames)
        while self.back.poll(0):
            frames = self.back.recv_multipart()
            if not self._dropped("to_primary") and self.primary_id is not None:
                self.front.send_multipart([self.primary_id, *frames])

    def inject_to_primary(self, frames: list[bytes]) -> None:
        assert self.primary_id is not None
        self.front.send_multipart([self.primary_id, *frames])

    def _dropped(self, direction: str) -> bool:
        if self.drop[direction] > 0:
            self.drop[direction] -= 1
            return True
        return False


class Pair:
    """A primary and a secondary link, the model, and the primary's executed actions."""

    def __init__(self, ctx: zmq.Context, router: Router, model: Model, pair: int = PAIR,
                 shim: Shim | None = None, withhold: Collection[tuple[int, int]] = frozenset()) -> None:
        self.model = model
        self.shim = shim
        self.secondary = SecondaryLink(router, SecondaryReplica(EPOCH, pair, new_table()), CODEC)
        self.primary = PrimaryLink(ctx, PrimaryReplicator(EPOCH, pair), CODEC,
                                   shim.endpoint if shim else router.endpoint,
                                   payloads_for=self.payloads_for)
        self.executed: list[WriteDecision | Release] = []
        self.refused: list[Refused] = []
        self.asked: list[tuple[int, list]] = []
        self.withhold = withhold       # (flow, seq) duplicates the switch "loses"
        self.next = 1
        self._last_tick = time.monotonic()

    def payloads_for(self, batch: int, stamps: np.ndarray) -> tuple[bytes, ...]:
        self.asked.append((batch, stamps.tolist()))
        by_stamp = dict(zip(map(tuple, self.model.stamps(batch).tolist()), self.model.payloads(batch)))
        return tuple(by_stamp[tuple(s)] for s in stamps.tolist())

    def feed(self, until: int) -> None:
        """Process the next batch if the window allows: duplicates to S first, as the switch would."""
        if self.next > until or not self.primary.window_open:
            return
        t = self.next
        keep = [i for i, p in enumerate(self.model.batches[t - 1]) if (p.flow, p.seq) not in self.withhold]
        self.secondary.on_packets(self.model.stamps(t)[keep], tuple(self.model.payloads(t)[i] for i in keep))
        stamps, delta = self.model.process(t)
        self.do(self.primary.submit_batch(t, stamps, delta))
        self.next += 1

    def do(self, actions: list) -> None:
        """The worker's part: record decisions and releases; the egress sends at once here."""
        for a in actions:
            (self.refused if isinstance(a, Refused) else self.executed).append(a)
            if isinstance(a, Release):
                self.primary.execute(self.primary.core.output_sent(a.batch))

    def step(self, until: int) -> None:
        self.feed(until)
        self.do(self.primary.poll_once(0))
        if self.shim:
            self.shim.pump()
        self.refused += self.secondary.poll_once(1)
        if self.shim:
            self.shim.pump()
        if time.monotonic() - self._last_tick >= TICK_S:
            self._last_tick = time.monotonic()
            self.do(self.primary.tick())
            self.do(self.primary.execute(self.primary.core.commit()))   # the worker's quiet-spell Commit
            self.secondary.tick()

    def run(self, n: int, timeout: float = 5.0) -> None:
        """Until batch ``n`` is released and applied at the secondary, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.secondary.core.committed < n:
            assert time.monotonic() < deadline, (
                f"stuck: released {self.released[-3:]}, secondary committed {self.secondary.core.committed}, "
                f"primary {self.primary.counters}, secondary {self.secondary.counters}")
            self.step(n)

    @property
    def released(self) -> list[int]:
        return [a.batch for a in self.executed if isinstance(a, Release)]

    def assert_consistent(self, n: int) -> None:
        """Every batch released once, in order, each after its decision; both replicas agree."""
        assert self.released == list(range(1, n + 1))
        decided = 0
        for a in self.executed:
            if isinstance(a, WriteDecision):
                assert a.batch > decided
                decided = a.batch
            else:
                assert a.batch <= decided, f"Release({a.batch}) before its WriteDecision"
        assert decided == n
        assert table_state(self.secondary.core.table) == table_state(self.model.table)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()


@pytest.fixture
def router(context: zmq.Context) -> Iterator[Router]:
    r = Router(context, "tcp://127.0.0.1:*")
    yield r
    r.close()


@pytest.fixture
def make_pair(context: zmq.Context, router: Router) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(n_batches: int, **kw) -> Pair:
        p = Pair(context, router, Model(n_batches), **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_200_batches_are_decided_released_and_applied_in_order(make_pair, router):
    p = make_pair(200)
    p.run(200)
    p.assert_consistent(200)
    assert p.refused == [] and p.primary.bad_frames == p.secondary.bad_frames == router.bad_frames == 0
    # presumed commit: one Prepare per batch (commits ride on the next one), and one lazy Commit at the end
    assert 200 < p.primary.sent <= 205 and p.secondary.received == p.primary.sent
    assert p.primary.refused == p.secondary.refused == 0


def test_a_batch_is_committed_to_the_secondary_only_once_its_output_is_sent(make_pair):
    """Output-commit order: no Prepare carries committed_upto >= t (nor a Commit goes) before
    the caller reports t's output sent; then the next Prepare commits it."""
    p = make_pair(3)
    p.secondary.on_packets(p.model.stamps(1), p.model.payloads(1))
    assert p.primary.submit_batch(1, *p.model.process(1)) == []
    deadline, actions = time.monotonic() + 5, []
    while not actions:
        assert time.monotonic() < deadline
        p.secondary.poll_once(0)
        actions = p.primary.poll_once(1)
    assert [type(a) for a in actions] == [WriteDecision, Release]
    p.secondary.on_packets(p.model.stamps(2), p.model.payloads(2))
    p.primary.submit_batch(2, *p.model.process(2))    # sent at once, with committed_upto=0
    for _ in range(20):
        p.secondary.poll_once(1)
        assert p.primary.tick() == []                  # no Commit while batch 1 is unsent
    assert p.secondary.core.committed == 0 and p.secondary.core.prepared == 2
    p.primary.core.output_sent(1)
    p.secondary.on_packets(p.model.stamps(3), p.model.payloads(3))
    p.primary.submit_batch(3, *p.model.process(3))    # committed_upto=1
    deadline = time.monotonic() + 5
    while p.secondary.core.committed < 1:
        assert time.monotonic() < deadline
        p.secondary.poll_once(1)


def test_lost_messages_are_recovered_by_ticks_and_retransmits(make_pair, socket, random_endpoint, router):
    # The shim loses the first three messages to the secondary (Prepares 1-3) and the first two votes.
    shim = Shim(socket, random_endpoint, router.endpoint, drop_to_secondary=3, drop_to_primary=2)
    p = make_pair(20, shim=shim)
    p.run(20)
    p.assert_consistent(20)
    assert p.shim.drop == {"to_secondary": 0, "to_primary": 0}
    assert p.primary.sent > 20 + 3       # Prepares, retransmits, a lazy Commit


def test_missing_duplicates_are_fetched_from_the_primary(make_pair):
    model_first = Model(6).batches[2][0]
    p = make_pair(6, withhold={(model_first.flow, model_first.seq)})
    p.run(6)
    p.assert_consistent(6)
    assert p.asked and p.asked[0][0] == 3 and p.asked[0][1] == [(model_first.flow, model_first.seq)]


def test_garbage_at_the_router_is_counted_and_ignored(make_pair, router, socket, caplog):
    p = make_pair(30)
    p.run(10)
    rogue = socket(zmq.DEALER)
    rogue.connect(router.endpoint)
    good = [bytes(f) for f in CODEC.encode(prepare(11, [(1, 1)], committed_upto=10))]
    truncated = [*good[:2], good[2][:-3], *good[3:]]
    unknown_pair = [bytes(f) for f in CODEC.encode(prepare(11, [(1, 1)], committed_upto=10, pair=PAIR + 1))]
    old_epoch = [bytes(f) for f in CODEC.encode(prepare(11, [(1, 1)], committed_upto=10, epoch=EPOCH - 1))]
    for frames in ([os.urandom(40)], [os.urandom(3), os.urandom(30)], [b"Z", *good[1:]],
                   unknown_pair, truncated, truncated, old_epoch):
        rogue.send_multipart(frames)
    with caplog.at_level(logging.WARNING, logger="deft.runtime.replication.driver"):
        p.run(30)
    p.assert_consistent(30)
    assert router.bad_frames == 4           # random x2, wrong kind, unknown pair: no link can take them
    assert p.secondary.bad_frames == 2      # truncated arrays, routed to the pair by its header
    assert p.secondary.refused == 1         # old epoch: decoded, refused by the core
    assert p.secondary.peer != rogue.routing_id  # a refused message never redirects the replies
    assert "refused Prepare: epoch/pair 2/7 is not 3/7" in caplog.text
    assert caplog.text.count("ignoring a bad message") == 2   # once per router, once per link


def test_garbage_at_the_dealer_is_counted_and_ignored(make_pair, router, socket, random_endpoint, caplog):
    p = make_pair(30, shim=Shim(socket, random_endpoint, router.endpoint))
    p.run(10)
    missing = [bytes(f) for f in CODEC.encode(Missing(EPOCH, PAIR, 11, make_stamps([1, 2], [1, 1])))]
    garbage = ([os.urandom(50)], [b"Q", *missing[1:]], [*missing[:2], missing[2][:20]], [b"V", b"{]"],
               [bytes(f) for f in CODEC.encode(Vote(EPOCH - 1, PAIR, 10, 9))],
               [bytes(f) for f in CODEC.encode(Vote(EPOCH, PAIR + 5, 10, 9))])
    for frames in garbage:
        p.shim.inject_to_primary(frames)
    with caplog.at_level(logging.WARNING, logger="deft.runtime.replication.driver"):
        p.run(30)
    p.assert_consistent(30)
    assert p.primary.bad_frames == 4
    assert p.primary.refused == 2 and len(p.refused) == 2   # wrong epoch, wrong pair: returned as Refused
    assert "refused Vote: epoch/pair 2/7 is not 3/7" in caplog.text


def test_one_router_serves_several_pairs(make_pair, router):
    a = make_pair(12)
    b = make_pair(12, pair=PAIR + 1)
    deadline = time.monotonic() + 5
    while a.secondary.core.committed < 12 or b.secondary.core.committed < 12:
        assert time.monotonic() < deadline
        a.step(12)
        b.step(12)
    a.assert_consistent(12)
    b.assert_consistent(12)
    assert router.bad_frames == 0


def test_close_is_idempotent_and_frees_the_pair(make_pair, router, context):
    p = make_pair(2)
    p.close()
    p.close()
    again = SecondaryLink(router, SecondaryReplica(EPOCH, PAIR, new_table()), CODEC)
    again.close()


def test_frames_cross_real_sockets_without_copies(bound_pair, recv):
    """The codec's frames through a ROUTER/DEALER pair with copy=False on both ends."""
    router_sock, dealer = bound_pair(zmq.ROUTER, zmq.DEALER)
    msg = prepare(4, [(1, 1), (2, 3)], committed_upto=3)
    dealer.send_multipart(CODEC.encode(msg), copy=False)
    assert router_sock.poll(1000)
    identity, *frames = router_sock.recv_multipart(copy=False)
    back = CODEC.decode(frames)
    assert back.stamps.tobytes() == msg.stamps.tobytes()
    assert back.delta.records.tobytes() == msg.delta.records.tobytes()
    router_sock.send_multipart([identity.bytes, *CODEC.encode(Vote(EPOCH, PAIR, 4, 3))], copy=False)
    assert CODEC.decode(recv(dealer)) == Vote(EPOCH, PAIR, 4, 3)


def test_a_primary_link_speaks_the_documented_frames(context, socket, random_endpoint, recv):
    """A bare ROUTER plays the secondary: what the link sends, and what it makes of a vote."""
    peer = socket(zmq.ROUTER)
    link = PrimaryLink(context, PrimaryReplicator(EPOCH, PAIR), CODEC, random_endpoint(peer))
    try:
        model = Model(2)
        link.submit_batch(1, *model.process(1))
        identity, kind, header, *arrays = recv(peer)
        assert kind == b"P" and len(arrays) == 5
        assert CODEC.decode([kind, header, *arrays]).stamps.tobytes() == model.stamps(1).tobytes()
        peer.send_multipart([identity, *CODEC.encode(Vote(EPOCH, PAIR, 1, 0))])
        deadline, actions = time.monotonic() + 5, []
        while not actions:
            assert time.monotonic() < deadline
            actions = link.poll_once(10)
        assert actions == [WriteDecision(EPOCH, PAIR, 1), Release(1)]
        link.core.output_sent(1)
        link.execute(link.core.commit())    # presumed commit: sent once nothing else carried it
        assert CODEC.decode(recv(peer)[1:]) == Commit(EPOCH, PAIR, 1)
    finally:
        link.close()
