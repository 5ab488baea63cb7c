"""Failpoints for real-process fault tests (etcd robustness style), controlled by the environment.

``DEFT_RAFT_FAILPOINTS="raft_after_persist=exit@0.01,raft_before_send=sleep:0.2"``
arms named points: ``exit`` kills the process on the spot (``os._exit(137)``,
like kill -9: no cleanup, no flush), ``sleep:S`` stalls it, ``raise`` raises
FailpointError; ``@P`` fires with probability P (default 1), ``#N`` only at
the N-th time the point is reached in this process. Unarmed points cost one
dict lookup. Only drivers and worker processes call these; the core never
does. ``DEFT_FAILPOINTS`` arms points the same way (the worker's, e.g.
``worker_global_applied=exit#40``: a primary dies after its batch's global
entry was applied and before its 2PC prepare).
"""

from __future__ import annotations

import os
import random
import time

from deft.runtime.consensus.errors import ConsensusError


class FailpointError(ConsensusError):
    """Raised by a failpoint armed with ``raise``."""


def _parse(spec: str) -> dict[str, tuple[str, float, int]]:
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("#")
        action, _, prob = action.partition("@")
        points[name] = (action, float(prob) if prob else 1.0, int(nth) if nth else 0)
    return points


_ARMED = _parse(os.environ.get("DEFT_RAFT_FAILPOINTS", "") + "," + os.environ.get("DEFT_FAILPOINTS", ""))
_HITS: dict[str, int] = {}
_rng = random.Random()


def failpoint(name: str) -> None:
    armed = _ARMED.get(name)
    if armed is None:
        return
    action, prob, nth = armed
    if nth:
        _HITS[name] = hits = _HITS.get(name, 0) + 1
        if hits != nth:
            return
    if _rng.random() >= prob:
        return
    if action == "exit":
        os._exit(137)
    elif action.startswith("sleep:"):
        time.sleep(float(action[6:]))
    elif action == "raise":
        raise FailpointError(f"failpoint {name}")
