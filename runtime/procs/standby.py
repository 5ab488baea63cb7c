"""Hot standby: a second io process per node, started and waiting.

A standby has imported everything; it sleeps on its role's takeover bell. When
the supervisor reaps the active process it writes the standby's pid into the
role's counter block (``owner``), drops stale posts and rings the bell; a
woken standby that is not the named owner goes back to sleep, so two
processes never work one SPSC ring. The standby then attaches like a restarted
process would (its units recover their journals and resend their sent logs,
it takes the supervisor's ingress socket), in milliseconds instead of a
restart's few hundred.
"""

from __future__ import annotations

import os

from deft.runtime.ring import Doorbell
from deft.runtime.stats import CounterBlock
from deft.runtime.topology import Topology

ROLES = ("io",)


def stats_key(role: str, index: int) -> str:
    return role


def wait_for_takeover(topo: Topology, role: str, index: int, stop) -> bool:
    """Sleep until named owner and woken (True), or until stopped (False)."""
    key = stats_key(role, index)
    bell = Doorbell.attach(topo.takeover_bell(key))
    stats = CounterBlock.attach(topo.stats(key))
    try:
        while not stop:
            if bell.wait(0.5) and stats.get("owner") == os.getpid():
                return True
        return False
    finally:
        stats.close()
        bell.close()
