"""Failure detection unit (FDU): a member is failed after ``miss_limit`` missed beats.

Pure: time is passed in (milliseconds), nothing is read from a clock, so a
test drives it beat by beat. Liveness is counted like the ZeroMQ Guide's
Paranoid Pirate: a member that has not been heard from for
``interval_ms x miss_limit`` is declared failed, once; a beat from a failed
member brings it back (reported as recovered, so the caller can tell a
restarted node from one that never left).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Member:
    last_ms: float
    failed: bool = False


class FailureDetector:
    def __init__(self, interval_ms: float, miss_limit: int):
        if interval_ms <= 0 or miss_limit < 1:
            raise ValueError("interval_ms must be > 0 and miss_limit >= 1")
        self.timeout_ms = interval_ms * miss_limit
        self.members: dict[str, Member] = {}
        self.stalls = 0   # times every live member fell silent at once (see expired)

    def observe(self, member: str, now_ms: float) -> str | None:
        """Record a beat; returns "joined" or "recovered" when that is news, else None."""
        m = self.members.get(member)
        if m is None:
            self.members[member] = Member(now_ms)
            return "joined"
        m.last_ms = max(m.last_ms, now_ms)
        if m.failed:
            m.failed = False
            return "recovered"
        return None

    def expired(self, now_ms: float) -> list[str]:
        """Members that just passed the timeout (each reported once per failure).

        Every live member silent at once (two or more) is taken as a stall of the detector's own
        process or host, or its network, not as that many failures: their clocks restart instead
        (``stalls`` counts it). Failing them all over would leave nowhere to fail over to, and when
        the stall was ours, replay every pair's in-doubt batches (seen: a loaded test machine stalled
        the controller past 100 ms of detection, 3 nodes declared failed at once, 28 packets twice).
        A member that really died is known by its closed connection anyway, or one timeout later.
        """
        live = [m for m in self.members.values() if not m.failed]
        silent = [name for name, m in self.members.items() if not m.failed and now_ms - m.last_ms > self.timeout_ms]
        if len(silent) >= 2 and len(silent) == len(live):
            self.stalls += 1
            for m in live:
                m.last_ms = now_ms
            return []
        for name in silent:
            self.members[name].failed = True
        return sorted(silent)

    def fail_now(self, member: str) -> bool:
        """The member is known to be gone without waiting for its beats (its connection closed);
        True if that is news."""
        m = self.members.get(member)
        if m is None or m.failed:
            return False
        m.failed = True
        return True

    def is_failed(self, member: str) -> bool:
        m = self.members.get(member)
        return m is not None and m.failed

    def silence_ms(self, member: str, now_ms: float) -> float:
        return now_ms - self.members[member].last_ms

    def forget(self, member: str) -> None:
        self.members.pop(member, None)
