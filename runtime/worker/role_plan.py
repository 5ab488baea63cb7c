"""What a route set asks of one worker: the role changes, as a pure function of the routes.

The worker (``Worker.refresh``) executes the plan in order; everything that
decides *which* roles change is here, with no I/O and no worker state beyond
the pairs it serves, so the rules can be read and tested on their own
(``tests/unit/test_role_plan.py``).

Per pair, in order:

* ``Serve``: this worker is the pair's primary and does not serve it yet: take
  the replica kept here over (``takeover``), or start the pair fresh. Not in the
  route set a restarted worker died under, for a pair with a secondary: the
  secondary is taking it over with its state, and this worker's is gone.
* ``Replicate``: this worker is the primary; the pair's secondary (node, instance,
  generation) as the routes name it (the worker does nothing if it is unchanged).
* ``Retire``: this worker served the pair and is no longer its primary (or the
  pair is gone); ``secondary_here``: it is now the pair's secondary (a hand-over
  to the old secondary, this worker its next secondary).
* ``BeSecondary`` / ``DropSecondary``: with replication, whether this worker keeps
  a replica of the pair, and for which primary (node, instance, generation).
  After ``Retire`` of the same pair: what the retired slot forwarded must reach
  the replica here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from deft.runtime.dataplane.routes import NONE


@dataclass(frozen=True, slots=True)
class Serve:
    pair: int
    decision: int      # the dead primary's last decided batch (the routes' take-over decision)


@dataclass(frozen=True, slots=True)
class Replicate:
    pair: int
    secondary: tuple[int, int, int]   # (node index in the routes or NONE, instance, generation)


@dataclass(frozen=True, slots=True)
class Retire:
    pair: int
    secondary_here: bool


@dataclass(frozen=True, slots=True)
class BeSecondary:
    pair: int
    primary: tuple[int, int, int]     # (node index in the routes, instance, generation)


@dataclass(frozen=True, slots=True)
class DropSecondary:
    pair: int


Change = Serve | Replicate | Retire | BeSecondary | DropSecondary


def plan_roles(rows: list[list[int]], me: int, index: int, serving: set[int] | frozenset[int], *,
               replicating: bool, skip_new_with_secondary: bool = False) -> list[Change]:
    """The changes that take worker ``index`` of node ``me`` (its number in the routes) from serving
    ``serving`` to what ``rows`` (per pair: primary node, instance, secondary node, instance,
    take-over decision, generation) asks. ``skip_new_with_secondary``: the routes are the set this
    (restarted) worker died under, so it takes up no pair that has a secondary."""
    plan: list[Change] = []
    for p, (pn, pi, sn, si, decision, gen) in enumerate(rows):
        secondary_here = (sn, si) == (me, index)
        if (pn, pi) == (me, index):
            if p not in serving:
                if skip_new_with_secondary and sn != NONE:
                    continue   # its secondary is taking it over; a later route set may give it back
                plan.append(Serve(p, decision))
            if replicating:
                plan.append(Replicate(p, (sn, si, gen)))
        elif p in serving:
            plan.append(Retire(p, secondary_here))
        if replicating:
            plan.append(BeSecondary(p, (pn, pi, gen)) if secondary_here else DropSecondary(p))
    plan += [Retire(p, False) for p in sorted(serving) if p >= len(rows)]
    return plan
