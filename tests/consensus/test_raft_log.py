"""RaftLog and quorum arithmetic: unit tests and optimized-vs-naive property tests."""

import itertools
import random

import pytest

from deft.runtime.consensus import Entry, InvariantViolation
from deft.runtime.consensus.log import RaftLog
from deft.runtime.consensus.quorum import VoteResult, committed_index, vote_result


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + k, b"%d" % (start + k)) for k, t in enumerate(terms)]


def test_maybe_append_never_truncates_matching_entries() -> None:
    lg = RaftLog(ents(1, 1, 2, 2))
    assert lg.maybe_append(1, 1, 0, ents(1, 2, start=2)) == 3  # stale: a prefix
    assert [e.term for e in lg.entries] == [1, 1, 2, 2]
    assert lg.stable == 4  # nothing became unstable


def test_maybe_append_truncates_only_from_the_first_conflict() -> None:
    lg = RaftLog(ents(1, 1, 2, 2))
    assert lg.maybe_append(2, 1, 0, ents(2, 3, start=3)) == 4
    assert [e.term for e in lg.entries] == [1, 1, 2, 3]
    assert lg.stable == 3
    assert [e.term for e in lg.unstable_entries()] == [3]


def test_maybe_append_rejects_on_prev_mismatch_and_moves_commit_only_forward() -> None:
    lg = RaftLog(ents(1, 1, 2), commit=2)
    assert lg.maybe_append(3, 1, 3, []) is None
    assert lg.maybe_append(1, 1, 1, []) == 1
    assert lg.committed == 2
    assert lg.maybe_append(3, 2, 9, []) == 3
    assert lg.committed == 3  # min(leader commit, last new index)


def test_truncating_a_committed_entry_is_an_invariant_violation() -> None:
    lg = RaftLog(ents(1, 1, 1), commit=2)
    with pytest.raises(InvariantViolation):
        lg.maybe_append(1, 1, 0, ents(2, start=2))


def test_maybe_commit_requires_current_term() -> None:
    lg = RaftLog(ents(1, 2, 3))
    assert not lg.maybe_commit(2, 3)  # Figure 8: an older-term entry is not committed by counting
    assert lg.maybe_commit(3, 3)
    assert lg.committed == 3


def test_find_conflict_by_term_skips_entries_of_higher_terms() -> None:
    lg = RaftLog(ents(1, 1, 4, 4, 5))
    assert lg.find_conflict_by_term(5, 3) == 2
    assert lg.find_conflict_by_term(9, 5) == 5
    assert lg.find_conflict_by_term(4, 0) == 0


def test_stable_to_ignores_a_replaced_entry() -> None:
    lg = RaftLog(ents(1))
    lg.append(ents(1, 1, start=2))
    lg.append(ents(2, start=3))  # replaced before advance
    lg.stable_to(3, 1)
    assert lg.stable == 1
    lg.stable_to(3, 2)
    assert lg.stable == 3


def test_is_up_to_date() -> None:
    lg = RaftLog(ents(1, 2))
    assert lg.is_up_to_date(2, 2) and lg.is_up_to_date(1, 3)
    assert not lg.is_up_to_date(1, 2) and not lg.is_up_to_date(5, 1)


def naive_committed(voters: list[int], match: dict[int, int]) -> int:
    """The largest index such that a majority has match >= it."""
    best = 0
    for idx in set(match.values()) | {0}:
        if sum(1 for v in voters if match.get(v, 0) >= idx) * 2 > len(voters):
            best = max(best, idx)
    return best


def test_committed_index_matches_naive() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        voters = list(range(1, rng.randint(1, 7) + 1))
        match = {v: rng.randint(0, 10) for v in voters if rng.random() < 0.9}
        assert committed_index(voters, match) == naive_committed(voters, match)


def test_vote_result_matches_naive() -> None:
    for n in range(1, 6):
        voters = list(range(n))
        for combo in itertools.product((None, True, False), repeat=n):
            votes = {v: g for v, g in zip(voters, combo) if g is not None}
            yes = sum(1 for g in votes.values() if g)
            no = sum(1 for g in votes.values() if not g)
            expect = (VoteResult.WON if yes * 2 > n else
                      VoteResult.LOST if (n - no) * 2 <= n else VoteResult.PENDING)
            assert vote_result(voters, votes) is expect
