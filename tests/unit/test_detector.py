"""Failure detection unit: miss counting with time passed in."""

from __future__ import annotations

import pytest

from deft.runtime.controller.detector import FailureDetector


def test_member_fails_after_miss_limit_beats_and_is_reported_once():
    fdu = FailureDetector(interval_ms=10, miss_limit=3)
    assert fdu.observe("n1", 0) == "joined"
    assert fdu.observe("n1", 10) is None
    assert fdu.expired(40) == []          # 30 ms of silence: exactly the limit
    assert fdu.expired(41) == ["n1"]
    assert fdu.expired(100) == []         # once
    assert fdu.is_failed("n1")


def test_a_beat_after_failure_is_a_recovery():
    fdu = FailureDetector(10, 3)
    fdu.observe("n1", 0)
    fdu.expired(50)
    assert fdu.observe("n1", 60) == "recovered"
    assert not fdu.is_failed("n1")
    assert fdu.expired(70) == []


def test_late_beats_do_not_move_time_backwards():
    fdu = FailureDetector(10, 2)
    fdu.observe("n1", 100)
    fdu.observe("n1", 50)                 # a delayed, reordered beat
    assert fdu.silence_ms("n1", 110) == 10


def test_members_are_independent():
    fdu = FailureDetector(10, 3)
    fdu.observe("a", 0)
    fdu.observe("b", 0)
    fdu.observe("b", 35)
    assert fdu.expired(40) == ["a"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        FailureDetector(0, 3)
    with pytest.raises(ValueError):
        FailureDetector(10, 0)


def test_every_member_silent_at_once_is_a_stall_here_not_that_many_failures():
    fdu = FailureDetector(10, 3)
    for name in ("a", "b", "c"):
        fdu.observe(name, 0)
    assert fdu.expired(200) == [] and fdu.stalls == 1     # the detector (or its host) stalled
    assert fdu.expired(225) == []                         # their clocks restarted at 200
    fdu.observe("a", 230)
    fdu.observe("b", 230)
    assert fdu.expired(240) == ["c"]                      # one silent among live ones: a failure


def test_a_single_member_silent_is_still_a_failure():
    fdu = FailureDetector(10, 3)
    fdu.observe("a", 0)
    assert fdu.expired(41) == ["a"]
