"""SecondaryReplica: staging, votes, gaps, missing packets, commits, refusal, sync and take-over."""

from __future__ import annotations

import numpy as np
import pytest
from deft.runtime.replication import (
    Commit,
    InvariantViolation,
    Missing,
    NeedFrom,
    NotSynced,
    Packets,
    Prepare,
    ProtocolMisuse,
    Refused,
    SecondaryReplica,
    Send,
    Sync,
    Vote,
)

from .helpers import EPOCH, EXPORT, PAIR, counts_of, delta, prepare, stamps
from .model import new_table


def secondary(**kw) -> SecondaryReplica:
    return SecondaryReplica(EPOCH, PAIR, new_table(), **kw)


def sent(actions: list) -> list:
    return [a.message for a in actions if isinstance(a, Send)]


def vote(t: int, committed: int = 0) -> Vote:
    return Vote(EPOCH, PAIR, t, committed)


def with_packets(s: SecondaryReplica, *pairs) -> list:
    return s.on_packets(stamps(*pairs), tuple(f"pkt{f}.{q}" for f, q in pairs))


def test_prepare_is_staged_not_applied_then_commit_applies_it():
    s = secondary()
    with_packets(s, (1, 1), (2, 1))
    assert sent(s.step(prepare(1, [(1, 1), (2, 1)]))) == [vote(1)]
    assert counts_of(s.table) == {} and s.committed == 0 and s.prepared == 1
    assert sent(s.step(Commit(EPOCH, PAIR, 1))) == [vote(1, 1)]  # acknowledged
    assert counts_of(s.table) == {1: 1, 2: 1} and s.committed == 1
    assert s.next_expected == {1: 2, 2: 2}
    assert s.buffered == 0  # the batch's packets left the buffer


def test_piggy_backed_commit_and_stale_duplicates():
    s = secondary()
    with_packets(s, (1, 1), (1, 2))
    s.step(prepare(1, [(1, 1)]))
    assert sent(s.step(prepare(2, [(1, 2)], committed_upto=1))) == [vote(2, 1)]
    assert counts_of(s.table) == {1: 1}
    with_packets(s, (1, 1))  # a late duplicate of an applied packet
    assert s.stale == 1 and s.buffered == 1


def test_duplicate_prepare_is_voted_again_and_changes_nothing():
    s = secondary()
    with_packets(s, (1, 1))
    p = prepare(1, [(1, 1)])
    s.step(p)
    assert sent(s.step(p)) == [vote(1)]
    s.step(Commit(EPOCH, PAIR, 1))
    assert sent(s.step(p)) == [vote(1, 1)]
    assert counts_of(s.table) == {1: 1}


def test_conflicting_prepare_is_refused():
    s = secondary()
    with_packets(s, (1, 1), (2, 1))
    s.step(prepare(1, [(1, 1)]))
    [refused] = s.step(prepare(1, [(2, 1)]))
    assert isinstance(refused, Refused) and "conflicts" in refused.reason


def test_gap_is_held_and_asked_for_then_filled():
    s = secondary()
    with_packets(s, (1, 1), (1, 2), (1, 3))
    s.step(prepare(1, [(1, 1)]))
    assert sent(s.step(prepare(3, [(1, 3)]))) == [NeedFrom(EPOCH, PAIR, 2)]
    assert s.step(prepare(3, [(1, 3)])) == []  # asked once per gap
    assert s.prepared == 1
    assert sent(s.step(prepare(2, [(1, 2)]))) == [vote(3)]  # one cumulative vote for 2 and 3


def test_prepare_waits_for_its_packets_and_asks_after_missing_ticks():
    s = secondary(missing_ticks=2)
    with_packets(s, (1, 1))
    assert s.step(prepare(1, [(1, 1), (2, 1), (3, 1)])) == []  # duplicates not here yet: no vote
    assert s.tick() == []
    [missing] = sent(s.tick())
    assert isinstance(missing, Missing) and (missing.epoch, missing.pair, missing.batch) == (EPOCH, PAIR, 1)
    assert missing.stamps.tolist() == [(2, 1), (3, 1)]
    assert with_packets(s, (2, 1)) == []
    assert sent(s.step(Packets(EPOCH, PAIR, 1, stamps((3, 1)), ("p3",)))) == [vote(1)]


def test_received_points():
    assert SecondaryReplica.received_point(prepare(1, [(1, 1)])) == "prepare_received"
    assert SecondaryReplica.received_point(Commit(EPOCH, PAIR, 1)) == "commit_received"


@pytest.mark.parametrize("msg, reason", [
    (prepare(1, [(1, 1)], epoch=EPOCH - 1), "epoch/pair"),
    (prepare(1, [(1, 1)], pair=PAIR + 1), "epoch/pair"),
    (Commit(EPOCH, PAIR, 5), "never staged"),
    (Commit(EPOCH, PAIR, -1), "bad commit point"),
    (Vote(EPOCH, PAIR, 1, 0), "not for a secondary"),
    (prepare(0, [(1, 1)]), "batch ids"),
    (prepare(2, [(1, 1)], committed_upto=2), "committed_upto"),
    (prepare(1, [(1, 0)]), "seq 0"),
    (Prepare(EPOCH, PAIR, 1, stamps((1, 1), (1, 1)), delta({1: 1})), "repeated stamp"),
    (Prepare(EPOCH, PAIR, 1, stamps((1, 1)), "garbage"), "not a Delta"),
    (Prepare(EPOCH, PAIR, 1, np.array([1, 2]), delta({1: 1})), "stamps"),
    (Prepare(EPOCH, PAIR, 1, stamps((1, 1)), delta({1: 1}).__class__(
        np.zeros(1, dtype=[("flow_id", "<u8"), ("x", "<u2")]), np.zeros(0, np.uint64),
        np.zeros(0, np.uint64), np.zeros(0, np.uint64))), "export dtype"),
    (Prepare(EPOCH, PAIR, 1, stamps((1, 1)), delta({1: 1}).__class__(
        np.zeros(0, dtype=EXPORT), np.zeros(0, np.uint64), np.ones(2, np.uint64),
        np.ones(1, np.uint64))), "next_expected"),
    (Packets(EPOCH, PAIR, 1, stamps((1, 1)), ("a", "b")), "payloads"),
    (Sync(EPOCH, PAIR, 1, np.zeros(0, dtype=EXPORT), np.zeros(0, np.uint64), np.zeros(0, np.uint64),
          stamps()), "already synced"),
    (b"\x00\x01", "not a replication message"),
])
def test_bad_messages_are_refused_and_counted(msg, reason):
    s = secondary()
    [refused] = s.step(msg)
    assert isinstance(refused, Refused) and reason in refused.reason, refused.reason
    assert sum(s.refused.values()) == 1 and s.prepared == 0 and s.committed == 0


def _staged_three(s: SecondaryReplica) -> None:
    """Batches 1..3 staged, 1 committed; (1, 9) buffered beyond them."""
    with_packets(s, (1, 1), (2, 1), (1, 2), (2, 2), (1, 3), (1, 9), (2, 3))
    s.step(prepare(1, [(1, 1), (2, 1)]))
    s.step(prepare(2, [(2, 2), (1, 2)], committed_upto=1))
    s.step(prepare(3, [(1, 3)]))


def test_take_over_after_a_worker_crash_applies_decided_and_replays_the_rest():
    s = secondary()
    _staged_three(s)
    plan = s.take_over(2)
    assert plan.state_batch == 2 and counts_of(plan.table) == {1: 2, 2: 2}
    assert plan.next_expected == {1: 3, 2: 3}
    assert [(r.batch, r.release, r.stamps.tolist(), r.payloads) for r in plan.replays] == [
        (3, True, [(1, 3)], ("pkt1.3",))]
    assert plan.in_doubt == () and plan.last_batch == 3
    assert plan.rest.tolist() == [(1, 9), (2, 3)] and plan.rest_payloads == ("pkt1.9", "pkt2.3")
    with pytest.raises(ProtocolMisuse):
        s.step(Commit(EPOCH, PAIR, 3))  # retired


def test_take_over_can_replay_decided_batches_with_release_suppressed():
    s = secondary()
    _staged_three(s)
    plan = s.take_over(2, replay_decided=True)
    assert plan.state_batch == 1
    assert [(r.batch, r.release) for r in plan.replays] == [(2, False), (3, True)]
    assert plan.replays[0].stamps.tolist() == [(2, 2), (1, 2)]  # the primary's processing order


def test_take_over_after_a_node_crash_replays_and_releases_every_in_doubt_batch():
    s = secondary()
    _staged_three(s)
    plan = s.take_over(None)
    assert plan.state_batch == 1 and plan.in_doubt == (2, 3)
    assert [(r.batch, r.release) for r in plan.replays] == [(2, True), (3, True)]


def test_a_state_only_batch_in_doubt_is_applied_not_replayed():
    """A bucket move's import (rows and nextExpectedPktID, no packets) has nothing to replay: a take-over
    with it in doubt applies it, so the batches after it that carry the moved flows find their state."""
    s = secondary()
    with_packets(s, (1, 1), (7, 5))
    s.step(prepare(1, [(1, 1)]))
    s.step(Prepare(EPOCH, PAIR, 2, stamps(), delta({7: 4})))      # flow 7 moved in at seq 4
    s.step(prepare(3, [(7, 5)]))
    plan = s.take_over(None)
    assert [r.batch for r in plan.replays] == [1, 3] and plan.in_doubt == (1, 2, 3)
    assert counts_of(plan.table) == {7: 4} and plan.next_expected[7] == 5   # batch 3 replays on it


def test_take_over_refuses_an_impossible_commit_record():
    s = secondary()
    _staged_three(s)
    with pytest.raises(InvariantViolation):
        s.take_over(0)   # behind the commit the secondary saw
    with pytest.raises(InvariantViolation):
        s.take_over(4)   # a batch it never voted for
    with pytest.raises(ProtocolMisuse):
        s.take_over(True)


def test_rest_is_in_per_flow_seq_order():
    s = secondary()
    with_packets(s, (1, 3), (2, 1), (1, 1), (1, 2))
    plan = s.take_over(0)
    assert plan.rest.tolist() == [(1, 1), (2, 1), (1, 2), (1, 3)]
    assert plan.rest_payloads == ("pkt1.1", "pkt2.1", "pkt1.2", "pkt1.3")


def _sync(batch: int, epoch: int = EPOCH) -> Sync:
    records = np.zeros(1, dtype=EXPORT)
    records["flow_id"] = 1
    records["state"]["count"] = 4
    return Sync(epoch, PAIR, batch, records, np.array([1], np.uint64), np.array([5], np.uint64),
                stamps((1, 5)), ("pkt1.5",))


def test_new_secondary_holds_prepares_until_the_sync_and_replaces_its_state():
    s = secondary(synced=False)
    with_packets(s, (1, 6), (1, 4))              # a duplicate from before the sync, and one after
    assert s.step(prepare(8, [(1, 5), (1, 6)])) == []   # overtook the sync
    with pytest.raises(NotSynced):
        s.take_over(None)
    assert sent(s.step(_sync(7))) == [Vote(EPOCH, PAIR, 8, 6)]
    assert sent(s.step(_sync(7))) == [Vote(EPOCH, PAIR, 8, 6)]   # a retransmitted sync
    s.step(Commit(EPOCH, PAIR, 7))
    assert s.synced and counts_of(s.table) == {1: 4} and s.next_expected == {1: 5}
    assert s.buffered == 2                        # (1, 4) was stale; (1, 5) and (1, 6) stay for batch 8
    s.step(Commit(EPOCH, PAIR, 8))
    assert counts_of(s.table) == {1: 6} and s.buffered == 0


def test_take_over_with_a_decided_but_uncommitted_sync():
    s = secondary(synced=False)
    s.step(_sync(7))
    with pytest.raises(NotSynced):
        s.take_over(6)
    plan = s.take_over(7)
    assert counts_of(plan.table) == {1: 4} and plan.rest.tolist() == [(1, 5)]


def test_trim_drops_copies_the_applied_state_covers_and_keeps_the_rest():
    s = secondary()
    with_packets(s, (1, 1), (1, 2), (1, 3), (2, 5))
    s.step(prepare(1, [(1, 1), (1, 3)]))           # the primary skipped 1.2 (a gap it gave up on)
    s.step(Commit(EPOCH, PAIR, 1))
    assert s.buffered == 2                          # 1.2 would stay for ever, 2.5 is still to come
    assert s.trim() == 1 and s.buffered == 1 and s.stale == 1
    unsynced = secondary(synced=False)
    with_packets(unsynced, (1, 1))
    assert unsynced.trim() == 0 and unsynced.buffered == 1   # no applied state yet: nothing is known covered


def test_a_secondary_that_cannot_take_over_still_hands_over_its_packets():
    """Never synced (the primary died within the sync): no state, but every buffered packet, per flow
    in seq order, for the new primary to start the pair fresh with (G1 kept, G5 lost)."""
    s = secondary(synced=False)
    with_packets(s, (1, 6), (2, 1), (1, 4))
    with pytest.raises(NotSynced):
        s.take_over(None)
    assert s.salvage() == ("pkt1.4", "pkt2.1", "pkt1.6")
