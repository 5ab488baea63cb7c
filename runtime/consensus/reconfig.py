"""How the core follows membership changes (rules in ``membership.py``).

Module functions taking the core, like ``roles`` and ``election``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.progress import Progress
from deft.runtime.consensus.role import Role

if TYPE_CHECKING:
    from deft.runtime.consensus.core import RaftCore


def membership_at(core: RaftCore, index: int) -> Membership:
    """The configuration in force at ``index``: the latest CONF entry up to it, or the base."""
    e = core.log.conf_at(index)
    return Membership.decode(e.data) if e is not None else core._base_membership


def sync_membership(core: RaftCore) -> None:
    """Adopt the latest configuration in the log (appended or truncated since last time)."""
    e = core.log.conf_at(core.log.last_index())
    key = (e, core._base_membership)
    if key == core._membership_key:
        return  # nothing changed since the last look: skip decoding
    core._membership_key = key
    m = Membership.decode(e.data) if e is not None else core._base_membership
    if m == core.membership:
        return
    core.membership = m
    if core.role is Role.LEADER:
        last = core.log.last_index()
        for p in m.members:
            if p not in core.prs:
                core.prs[p] = Progress(match=0, next=last + 1, max_inflight=core.config.max_inflight)
        for p in [p for p in core.prs if p not in m.members and p != core.id]:
            del core.prs[p]
        core.maybe_commit()
        core._unsent_proposals = True  # new members need appends; commit may have moved


def check_removed(core: RaftCore) -> None:
    """A leader outside the voters steps down once that configuration is committed."""
    lg = core.log
    if (core.role is Role.LEADER and not core.promotable()
            and lg.conf_indexes and lg.committed >= lg.conf_indexes[-1]):
        core.become_follower(core.term, None)
