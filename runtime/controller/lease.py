"""The controller lease: at most one active controller at a time, and terms that fence a deposed one.

Two controllers (``[controller] peers``) share the cluster: one is active
(places pairs, pushes routes, runs operations), the other a standby that
watches the same beats. Who is active is decided by *voters*: every
controller and the *witness* nodes (``[controller] witnesses``), each granting
the lease to one holder at a time. A controller is active while a majority of
its voters granted it the lease and none of those grants has lapsed.

- A voter (``LeaseVoter``) grants ``lease_ms`` to one holder; another holder
  gets it only after it lapsed, and only for a higher term. So one term has
  one holder (two majorities of one voter set meet in a voter, which granted
  that term to one holder only).
- The holder (``LeaseCandidate``) counts a grant from the moment it *sent*
  the request, and ``LEASE_MARGIN`` shorter than the voter does: it steps
  down before the first voter frees the lease for another, as long as clocks
  run at rates within that margin.
- Every node, voter or not, fences by term (``LeaseVoter.admits``): it obeys
  a route set or a planned step only if the sender's term is not below the
  highest term it has seen. A controller deposed while it was cut off (or
  paused) learns the newer term from the first refusal or beat, and stops.

A lone controller (no peers) is its own only voter: always active (a stall of
its own does not end a lease no one else can hold), with a term above every
term the nodes report, so a restarted controller's routes fence off whatever
an older one might still send.

Pure and deterministic: the caller passes the time and carries the messages
(``leaselink.py``); ``tests/unit/test_lease.py`` drives many of them with
message delays, losses and pauses and checks that no two are active at once.
"""

from __future__ import annotations

import dataclasses
import math

LEASE_MARGIN = 0.15   # the holder's view of its lease ends this fraction of lease_ms before the voters'


@dataclasses.dataclass
class Grant:
    holder: str | None = None
    control: str = ""          # the holder's control endpoint (a standby names it to deft-ctl)
    term: int = 0
    expires_ms: float = -math.inf


class LeaseVoter:
    """One voter: a controller, or a node. Every node also fences (``admits``), voter or not."""

    def __init__(self) -> None:
        self.grant = Grant()
        self.fence = (0, None)   # (term, holder) of the newest active controller obeyed here

    @property
    def term(self) -> int:
        """The highest term this voter knows of (granted or obeyed)."""
        return max(self.grant.term, self.fence[0])

    def request(self, holder: str, term: int, lease_ms: float, control: str, now_ms: float) -> dict:
        """A lease request; the reply says whether it was granted, who holds the lease here, and the
        highest term known here (a candidate asks above it next time)."""
        g, floor = self.grant, max(self.grant.term, self.fence[0])
        if (g.holder == holder and term >= floor) or (now_ms >= g.expires_ms and term > floor):
            self.grant = Grant(holder, control, term, now_ms + lease_ms)
            return {"granted": True, **self.held(now_ms)}
        return {"granted": False, **self.held(now_ms)}

    def held(self, now_ms: float) -> dict:
        g = self.grant
        return {"term": self.term, "holder": g.holder, "control": g.control,
                "left_ms": round(max(0.0, g.expires_ms - now_ms), 1)}

    def admits(self, term: int, holder: str | None) -> bool:
        """Fencing: may a request of active controller ``holder`` at ``term`` be obeyed? Not below the
        newest term obeyed here (that controller was chosen by a majority since), which it becomes."""
        if term < self.fence[0]:
            return False
        self.fence = (term, holder)
        return True


class LeaseCandidate:
    """A controller's side: which term it asks for, which grants it holds, whether it is active."""

    def __init__(self, holder: str, voters: list[str], lease_ms: float, control: str = ""):
        if not voters:
            raise ValueError("a controller needs at least one voter (itself)")
        self.holder = holder
        self.voters = list(voters)
        self.majority = len(voters) // 2 + 1
        self.lease_ms = lease_ms
        self.control = control
        self.term = 0               # the term asked for, then held
        self.others = 0             # the highest term heard of from voters or nodes, not ours
        self.seq = 0
        self.sent: dict[int, float] = {}     # request seq -> when it was sent (for the grants it brings)
        self.grants: dict[str, float] = {}   # voter -> send time of its latest grant at self.term
        self.other: tuple[str, str] | None = None   # (holder, control) of the last other controller heard of

    def request(self, now_ms: float) -> dict:
        """The next lease request (the same to every voter): a renewal while active, else a claim at a
        term above every term heard of."""
        if self.term <= self.others and not self.active(now_ms):
            self.term, self.grants = self.others + 1, {}
        self.seq += 1
        self.sent[self.seq] = now_ms
        for seq in [s for s, t in self.sent.items() if t < now_ms - self.lease_ms]:
            del self.sent[seq]      # an answer that old grants nothing that has not lapsed
        return {"cmd": "lease", "holder": self.holder, "term": self.term, "lease_ms": self.lease_ms,
                "control": self.control, "seq": self.seq}

    def on_reply(self, voter: str, reply: dict, now_ms: float) -> None:
        """A voter's answer to ``request`` (``seq`` echoed). A refusal only says which term to ask next:
        a candidate that voter preferred may never win a majority."""
        sent = self.sent.get(reply.get("seq"))   # type: ignore[arg-type]
        term = reply.get("term")
        if not isinstance(term, int) or voter not in self.voters:
            return
        if reply.get("granted") and term == self.term and sent is not None:
            self.grants[voter] = max(self.grants.get(voter, -math.inf), sent)
            return
        if reply.get("holder") not in (None, self.holder):
            self.other = (reply["holder"], reply.get("control") or "")
        if term > self.term or reply.get("holder") != self.holder:
            self.others = max(self.others, term)

    def deposed_by(self, term: int, holder: str | None, control: str = "") -> None:
        """A node obeys ``holder`` at ``term`` (its beat, or its refusal of our request): at our term or
        above, that controller is the one chosen since (or an older incarnation of a lone controller):
        we are not active, and ask above it."""
        if holder is None or holder == self.holder:
            return
        self.other = (holder, control or (self.other[1] if self.other and self.other[0] == holder else ""))
        self.others = max(self.others, term)
        if term >= self.term:
            self.grants = {}

    def until_ms(self) -> float:
        """When this controller's lease ends in its own reckoning (-inf: not held; inf: a lone
        controller's, which no one else can be granted: only a newer term ends it)."""
        if len(self.grants) < self.majority:
            return -math.inf
        if len(self.voters) == 1:
            return math.inf
        nth = sorted(self.grants.values(), reverse=True)[self.majority - 1]
        return nth + self.lease_ms * (1 - LEASE_MARGIN)

    def active(self, now_ms: float) -> bool:
        return now_ms < self.until_ms()


def serve_request(voter: LeaseVoter, request: dict, now_ms: float) -> dict:
    """A ``{"cmd": "lease", ...}`` request from a controller, checked and answered (``seq`` echoed).
    ValueError names what is wrong with it."""
    holder, term, lease_ms = request.get("holder"), request.get("term"), request.get("lease_ms")
    control, seq = request.get("control", ""), request.get("seq")
    if not isinstance(holder, str) or not holder:
        raise ValueError("holder must be a non-empty string")
    if not isinstance(term, int) or isinstance(term, bool) or term < 0:
        raise ValueError(f"term must be a non-negative int, got {term!r}")
    if not isinstance(lease_ms, (int, float)) or isinstance(lease_ms, bool) or not 1 <= lease_ms <= 60_000:
        raise ValueError(f"lease_ms must be a number of ms in 1..60000, got {lease_ms!r}")
    if not isinstance(control, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("control must be a string and seq an int")
    return {**voter.request(holder, term, float(lease_ms), control, now_ms), "seq": seq}


def fenced(voter: LeaseVoter, request: dict, what: str) -> None:
    """A node's check of a controller's request that changes something (routes, freeze, move, kill):
    a request carrying a term below the newest obeyed is refused. One without a term is an
    operator's (deft-ctl to the node itself) and passes."""
    term = request.get("term")
    if term is None:
        return
    holder = request.get("controller")
    if not isinstance(term, int) or isinstance(term, bool) or not isinstance(holder, str):
        raise ValueError("term must be an int and controller a string")
    if not voter.admits(term, holder):
        newest, by = voter.fence
        raise ValueError(f"{what} refused: controller {holder} at term {term} was deposed "
                         f"(this node follows {by} at term {newest})")
