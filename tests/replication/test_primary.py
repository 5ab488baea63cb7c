"""PrimaryReplicator: pipelining, the output-commit order, retransmits, refusal, hold and sync."""

from __future__ import annotations

import random

import numpy as np
import pytest
from deft.runtime.replication import (
    Commit,
    Missing,
    NeedFrom,
    Packets,
    Prepare,
    PrimaryReplicator,
    ProtocolMisuse,
    Refused,
    Release,
    Send,
    Sync,
    Vote,
    WindowFull,
    WriteDecision,
)

from .helpers import EPOCH, EXPORT, PAIR, delta, stamps


def primary(**kw) -> PrimaryReplicator:
    return PrimaryReplicator(EPOCH, PAIR, **kw)


def feed(p: PrimaryReplicator, n: int) -> list:
    out = []
    for _ in range(n):
        t = p.next_batch
        out += p.on_batch(t, stamps((t, 1), (100 + t, 1)), delta({t: 1, 100 + t: 1}))
    return out


def vote(t: int, committed: int = 0) -> Vote:
    return Vote(EPOCH, PAIR, t, committed)


def kinds(actions: list) -> list[str]:
    names = []
    for a in actions:
        if isinstance(a, Send):
            names.append(f"{type(a.message).__name__}({getattr(a.message, 'batch', getattr(a.message, 'upto', ''))})")
        else:
            names.append(f"{type(a).__name__}({getattr(a, 'batch', '')})")
    return names


def test_on_batch_sends_a_prepare_with_the_decision_so_far():
    p = primary()
    [send] = p.on_batch(1, stamps((1, 1), (2, 1)), delta({1: 1, 2: 1}))
    msg = send.message
    assert isinstance(msg, Prepare) and (msg.epoch, msg.pair, msg.batch, msg.committed_upto) == (EPOCH, PAIR, 1, 0)
    assert msg.stamps.tolist() == [(1, 1), (2, 1)]
    assert send.crash_point == "prepare_sent"


def test_batch_ids_must_be_consecutive():
    p = primary()
    feed(p, 1)
    with pytest.raises(ProtocolMisuse):
        p.on_batch(3, stamps((1, 2)), delta({1: 2}))
    with pytest.raises(ProtocolMisuse):
        p.on_batch(2, np.zeros(1, dtype=[("a", "<u8")]), delta({1: 2}))


def test_pipelining_sends_up_to_window_prepares_before_any_vote():
    p = primary(window=3)
    sent = feed(p, 3)
    assert kinds(sent) == ["Prepare(1)", "Prepare(2)", "Prepare(3)"]
    assert not p.window_open
    with pytest.raises(WindowFull):
        p.on_batch(4, stamps((4, 1)), delta({4: 1}))
    p.step(vote(1))
    assert p.window_open and p.in_flight == 2


def sent_all(p: PrimaryReplicator, actions: list) -> list:
    """The egress sends every Release at once; returns the actions."""
    for a in actions:
        if isinstance(a, Release):
            p.output_sent(a.batch)
    return actions


def test_decision_write_then_release_then_commit_once_sent():
    """The output-commit rule: WriteDecision(t), Release(t), and t committed to the secondary only
    once its output is sent (the next Prepare's committed_upto, or a Commit on an idle tick)."""
    p = primary(retransmit_ticks=1)
    feed(p, 1)
    actions = p.step(vote(1))
    assert kinds(actions) == ["WriteDecision(1)", "Release(1)"]
    assert [a.crash_point for a in actions] == ["decision_written", "released"]
    assert p.received_point(vote(1)) == "vote_received"
    assert p.tick() == [] and p.sent == 0                       # not sent: nothing may say committed
    [prep] = feed(p, 1)
    assert prep.message.committed_upto == 0
    p.output_sent(1)
    [prep] = feed(p, 1)
    assert prep.message.committed_upto == 1                    # presumed commit: rides on the Prepare
    p.step(vote(3, 1))
    p.output_sent(2), p.output_sent(3)
    assert p.tick() == []                                      # ticks only retransmit
    [commit] = p.commit()                                      # idle: the driver's explicit Commit
    assert commit.message == Commit(EPOCH, PAIR, 3) and commit.crash_point == "commit_sent"
    assert p.commit_pending and len(p.commit()) == 1           # again, until acknowledged
    p.step(vote(3, 3))
    assert p.commit() == [] and not p.commit_pending


def test_output_sent_out_of_order_commits_only_the_sent_prefix():
    p = primary(window=3)
    feed(p, 3)
    p.step(vote(3))
    p.output_sent(2)
    assert p.sent == 0
    p.output_sent(1)
    assert p.sent == 2
    with pytest.raises(ProtocolMisuse):
        p.output_sent(2)
    p.output_sent(3)
    assert p.sent == 3


@pytest.mark.parametrize("seed", range(30))
def test_output_commit_order_under_random_votes(seed):
    """Any vote sequence: batches decided in order; every Release between its decision and its commit."""
    rng = random.Random(seed)
    p = primary(window=4)
    decided_at: dict[int, int] = {}
    released: list[int] = []
    log: list = []
    while p.next_batch <= 20 or p.in_flight:
        if p.next_batch <= 20 and p.window_open and rng.random() < 0.6:
            log += feed(p, 1)
        elif p.in_flight:
            log += p.step(vote(rng.randint(p.decided, p.last_batch), p.peer_committed))
    sent_upto = 0
    record, committed = 0, 0
    for a in list(log):
        if isinstance(a, Release):
            p.output_sent(a.batch)
            sent_upto = a.batch
    log += p.commit()
    for i, a in enumerate(log):
        if isinstance(a, WriteDecision):
            assert a.batch > record
            record = a.batch
            decided_at.update({t: i for t in range(committed + 1, a.batch + 1)})
        elif isinstance(a, Release):
            assert a.batch <= record and a.batch > committed, "released before its decision or after its commit"
            released.append(a.batch)
        elif isinstance(a, Send) and isinstance(a.message, Prepare):
            assert a.message.committed_upto <= record
        elif isinstance(a, Send) and isinstance(a.message, Commit):
            assert a.message.upto == record and all(t in released for t in range(committed + 1, record + 1))
            committed = a.message.upto
    assert released == list(range(1, 21)) and committed == sent_upto == 20


def test_votes_are_cumulative_and_idempotent():
    p = primary()
    feed(p, 3)
    assert kinds(sent_all(p, p.step(vote(2)))) == ["WriteDecision(2)", "Release(1)", "Release(2)"]
    assert p.step(vote(2)) == [] and p.step(vote(1)) == []
    assert kinds(p.step(vote(3, 2))) == ["WriteDecision(3)", "Release(3)"]


def test_retransmit_after_retransmit_ticks_with_fresh_commit_point():
    p = primary(retransmit_ticks=3)
    first = feed(p, 2)
    sent_all(p, p.step(vote(1)))
    assert p.tick() == [] and p.tick() == []
    [again] = p.tick()
    assert again.message.batch == 2 and again.message.committed_upto == 1
    assert np.array_equal(again.message.stamps, first[1].message.stamps)
    assert p.tick() == []  # the timer restarted


def test_an_explicit_commit_waits_until_nothing_is_in_flight_and_is_not_repeated():
    p = primary(window=2)
    feed(p, 2)
    sent_all(p, p.step(vote(1)))
    assert p.commit() == []                    # batch 2 in flight: its Prepare (or the next) carries it
    sent_all(p, p.step(vote(2)))
    [send] = p.commit()
    assert send.message == Commit(EPOCH, PAIR, 2)
    assert p.tick() == [] and p.tick() == [] and p.tick() == []     # ticks never send a Commit
    p.step(vote(2, 2))
    assert p.commit() == []


def test_need_from_retransmits_from_that_batch():
    p = primary()
    feed(p, 3)
    assert kinds(p.step(NeedFrom(EPOCH, PAIR, 2))) == ["Prepare(2)", "Prepare(3)"]
    p.step(vote(3))
    assert p.step(NeedFrom(EPOCH, PAIR, 2)) == []  # late: nothing left to resend


def test_missing_packets_are_answered_with_packets():
    p = primary()
    feed(p, 1)
    [send] = p.step(Missing(EPOCH, PAIR, 1, stamps((101, 1))))
    assert isinstance(send.message, Packets) and send.message.stamps.tolist() == [(101, 1)]
    [refused] = p.step(Missing(EPOCH, PAIR, 1, stamps((5, 5))))
    assert isinstance(refused, Refused)


@pytest.mark.parametrize("msg, reason", [
    (Vote(EPOCH + 1, PAIR, 1, 0), "epoch/pair"),
    (Vote(EPOCH, PAIR + 1, 1, 0), "epoch/pair"),
    (Vote(EPOCH, PAIR, 9, 0), "never prepared"),
    (Vote(EPOCH, PAIR, 1, 1), "never sent"),
    (Vote(EPOCH, PAIR, 1, 2), "bad commit point"),
    (Vote(True, PAIR, 1, 0), "non-negative ints"),
    (Vote(EPOCH, PAIR, np.int64(1), 0), "batch ids"),
    (Vote(EPOCH, PAIR, -1, 0), "batch ids"),
    (Vote(EPOCH, PAIR, "1", 0), "batch ids"),
    (Commit(EPOCH, PAIR, 1), "not for a primary"),
    (Missing(EPOCH, PAIR, 1, np.zeros(2, dtype="<u8")), "stamps"),
    ({"kind": "vote"}, "not a replication message"),
    (None, "not a replication message"),
])
def test_bad_messages_are_refused_and_counted(msg, reason):
    p = primary()
    feed(p, 1)
    [refused] = p.step(msg)
    assert isinstance(refused, Refused) and reason in refused.reason
    assert sum(p.refused.values()) == 1
    assert p.in_flight == 1 and p.decided == 0  # nothing moved


def test_secondary_lost_holds_release_until_a_sync_is_decided():
    p = primary(window=2)
    feed(p, 2)
    p.step(vote(1))
    assert p.secondary_lost() == []
    assert p.holding and p.window_open
    assert feed(p, 3) == []                            # processing goes on, nothing is sent or released
    assert p.step(vote(2)) == [Refused(vote(2), "no secondary attached")]
    records = np.zeros(0, dtype=EXPORT)
    flows = np.array([1], dtype=np.uint64)
    [send] = p.start_sync(EPOCH + 1, records, flows, np.array([2], dtype=np.uint64), stamps((1, 2)), (b"pkt",))
    sync = send.message
    assert isinstance(sync, Sync) and sync.batch == 6 and sync.epoch == EPOCH + 1
    assert p.step(vote(6)) == [Refused(vote(6), f"epoch/pair {EPOCH}/{PAIR} is not {EPOCH + 1}/{PAIR}")]
    actions = p.step(Vote(EPOCH + 1, PAIR, 6, 5))
    assert kinds(actions) == ["WriteDecision(6)", "Release(2)", "Release(3)", "Release(4)", "Release(5)"]
    assert not p.holding


def test_start_sync_needs_a_lost_secondary_and_a_newer_epoch():
    p = primary()
    args = (np.zeros(0, dtype=EXPORT), np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64), stamps())
    with pytest.raises(ProtocolMisuse):
        p.start_sync(EPOCH + 1, *args)
    p.secondary_lost()
    with pytest.raises(ProtocolMisuse):
        p.start_sync(EPOCH, *args)


def test_a_new_primary_without_secondary_holds_from_the_start():
    p = PrimaryReplicator(EPOCH, PAIR, last_batch=9, has_secondary=False)
    assert p.next_batch == 10 and p.holding
    assert p.on_batch(10, stamps((1, 4)), delta({1: 4})) == []


def _empty_sync_args():
    return (np.zeros(0, dtype=EXPORT), np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64), stamps())


def test_sync_is_retransmitted_and_pipelined_with_later_batches():
    p = primary(window=2, retransmit_ticks=2)
    p.secondary_lost()
    feed(p, 2)
    [sync] = p.start_sync(EPOCH + 1, *_empty_sync_args())
    assert sync.crash_point == "prepare_sent"
    [prep] = p.on_batch(4, stamps((4, 1)), delta({4: 1}))     # behind the sync, in the same window
    assert prep.message.epoch == EPOCH + 1 and not p.window_open
    p.tick()
    assert [type(a.message).__name__ for a in p.tick()] == ["Sync", "Prepare"]
    actions = p.step(Vote(EPOCH + 1, PAIR, 4, 2))
    assert kinds(actions) == ["WriteDecision(4)", "Release(1)", "Release(2)", "Release(4)"]


def test_losing_the_new_secondary_during_its_sync_holds_everything_again():
    p = primary()
    p.secondary_lost()
    feed(p, 2)
    p.start_sync(EPOCH + 1, *_empty_sync_args())                # batch 3
    feed(p, 1)                                                   # batch 4
    p.secondary_lost()
    [sync] = p.start_sync(EPOCH + 2, *_empty_sync_args())
    assert sync.message.batch == 5
    assert kinds(p.step(Vote(EPOCH + 2, PAIR, 5, 4))) == [
        "WriteDecision(5)", "Release(1)", "Release(2)", "Release(4)"]


def test_missing_refers_to_a_prepare_not_a_sync():
    p = primary()
    p.secondary_lost()
    p.start_sync(EPOCH + 1, *_empty_sync_args())
    [refused] = p.step(Missing(EPOCH + 1, PAIR, 1, stamps((1, 1))))
    assert isinstance(refused, Refused) and "sync" in refused.reason
