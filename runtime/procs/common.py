"""What every node process does the same way: die with the supervisor, stop on SIGTERM, log."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the supervisor dies (node failure = all of it)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the heartbeat/parent check below still ends us
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os._exit(1)


PRIORITY_BOOST = -5  # supervisor and controller: little work, but their beats must not wait for a core


def boost_priority() -> bool:
    """Run ahead of the data path (heartbeats on time); needs root or CAP_SYS_NICE, else a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY_BOOST)
        return True
    except OSError:
        return False


def normal_priority() -> None:
    """Children of a boosted supervisor start at its priority; data-path processes go back to 0."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass


class StopFlag:
    """Set by SIGTERM or SIGINT; loops check it between batches.

    A loop asleep when the signal comes would sleep on to its timeout (Python retries an interrupted
    poll): ``on_stop`` names what wakes it (its bell's ``ring``), called from the handler. A worker's
    sleep is up to a second: every node's stop took that long before.
    """

    def __init__(self) -> None:
        self.stopping = False
        self._wakes: list = []
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def on_stop(self, wake) -> None:
        self._wakes.append(wake)

    def _set(self, signum, frame) -> None:
        self.stopping = True
        for wake in self._wakes:
            try:
                wake()
            except OSError:   # closed already (FdBell.close): nothing sleeps on it any more
                pass

    def __bool__(self) -> bool:
        return self.stopping


def setup_logging(role: str) -> logging.Logger:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("DEFT_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s",
    )
    return logging.getLogger(f"deft.{role}")
