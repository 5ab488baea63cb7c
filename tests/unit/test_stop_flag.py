"""A process's stop flag: SIGTERM sets it and wakes what the loop sleeps on (its bell)."""

from __future__ import annotations

import select
import signal

from deft.runtime.procs.common import StopFlag
from deft.runtime.ring.fdbell import FdBell


def test_sigterm_sets_the_flag_and_rings_the_bell_the_loop_sleeps_on(node_id):
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    bell = FdBell.create(f"/deft.{node_id}.stoptest")
    gone = FdBell.create(f"/deft.{node_id}.stoptest2")
    try:
        stop = StopFlag()
        gone.close()
        stop.on_stop(gone.ring)     # closed before the signal: skipped, never raised into the loop
        stop.on_stop(bell.ring)
        assert not stop and select.select([bell.fileno()], [], [], 0)[0] == []
        signal.raise_signal(signal.SIGTERM)
        assert stop
        # a loop asleep on the bell wakes now, not at its timeout (Python retries an interrupted poll)
        assert select.select([bell.fileno()], [], [], 0)[0] == [bell.fileno()]
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        bell.close()
