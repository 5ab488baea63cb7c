"""The stamping unit's log of remote sends: circular, newest kept, only recent ones resent."""

from __future__ import annotations

import numpy as np

from deft.runtime.dataplane.packet import empty_batch
from deft.runtime.dataplane.sentlog import RESEND_WINDOW_NS, SLOTS, SentLog


def batch(seqs):
    b = empty_batch(len(seqs))
    b["flow_id"], b["seq"] = 1, seqs
    return b


def test_recent_sends_come_back_oldest_first_and_old_ones_do_not(node_id):
    log = SentLog.create(f"deft.{node_id}.sentlog.test")
    try:
        now = 10 * RESEND_WINDOW_NS
        log.append(batch([1, 2]), np.array([0, 1]), now - 2 * RESEND_WINDOW_NS)   # too old to resend
        log.append(batch([3, 4, 5]), np.array([0, 2]), now)                     # only 3 and 5 were remote
        assert log.recent(now)["seq"].tolist() == [3, 5]
    finally:
        log.close()


def test_the_log_wraps_and_keeps_the_newest(node_id):
    log = SentLog.create(f"deft.{node_id}.sentlog.wrap")
    try:
        seqs = np.arange(1, SLOTS + 101)
        log.append(batch(seqs[:150]), np.arange(150), 5)
        log.append(batch(seqs[150:]), np.arange(len(seqs) - 150), 5)
        got = log.recent(5)["seq"]
        assert len(got) == SLOTS and got[0] == 101 and got[-1] == SLOTS + 100
    finally:
        log.close()
