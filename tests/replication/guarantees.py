"""The guarantees a simulated run must keep, checked against the failure-free reference run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import table_state

if TYPE_CHECKING:
    from .sim import Sim


def check(sim: Sim) -> list[str]:
    """G1 no loss, G2 per-flow release order, G3 duplicates only where allowed, G5 outputs and state."""
    err: list[str] = []
    count: dict[tuple[int, int], int] = {}
    for o in sim.released:
        key = (o[0], o[1])
        count[key] = count.get(key, 0) + 1
        if o != sim.ref_out[key]:
            err.append(f"G5: released {o}, reference {sim.ref_out[key]}")
    missing = [k for k in sim.ref_out if k not in count]
    if missing:
        err.append(f"G1: never released {sorted(missing)[:5]} ({len(missing)})")
    twice = {k for k, c in count.items() if c > 1}
    if twice and not sim.node_crash:
        err.append(f"G3: released twice after worker crashes only: {sorted(twice)[:5]}")
    if twice - sim.in_doubt:
        err.append(f"G3: released twice outside the in-doubt batches: {sorted(twice - sim.in_doubt)[:5]}")
    # G2: a flow's packets leave in stamp order (a node crash may repeat in-doubt ones: skip repeats)
    seen: set[tuple[int, int]] = set()
    last: dict[int, int] = {}
    for o in sim.released:
        key = (o[0], o[1])
        if key in seen:
            continue
        seen.add(key)
        if o[1] != last.get(o[0], 0) + 1:
            err.append(f"G2: flow {o[0]} released seq {o[1]} after {last.get(o[0], 0)}")
        last[o[0]] = o[1]
    if table_state(sim.p_ep.prim.table) != sim.ref_table:
        err.append("G5: the primary's final state differs from the reference")
    if sim.finished and table_state(sim.s_ep.sec.table) != sim.ref_table:
        err.append("G5: the secondary's final state differs from the reference")
    return err
