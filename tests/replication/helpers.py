"""Small builders for the replication unit tests."""

from __future__ import annotations

import numpy as np
from deft.runtime.replication import Delta, Prepare, make_stamps

from .model import STATE_DTYPE, new_table

EPOCH, PAIR = 3, 7
EXPORT = new_table().export_dtype()


def stamps(*pairs: tuple[int, int]) -> np.ndarray:
    return make_stamps([f for f, _ in pairs], [s for _, s in pairs])


def delta(counts: dict[int, int], removed: tuple[int, ...] = ()) -> Delta:
    """A delta setting each flow's count (and next_expected = count + 1)."""
    records = np.zeros(len(counts), dtype=EXPORT)
    records["flow_id"] = list(counts)
    records["state"]["count"] = list(counts.values())
    flows = np.array(list(counts), dtype=np.uint64)
    return Delta(records, np.array(removed, dtype=np.uint64), flows,
                 np.array([c + 1 for c in counts.values()], dtype=np.uint64))


def prepare(batch: int, pairs: list[tuple[int, int]], committed_upto: int = 0, epoch: int = EPOCH,
            pair: int = PAIR) -> Prepare:
    """Prepare of a batch whose flows end at the highest seq it carries."""
    counts: dict[int, int] = {}
    for f, s in pairs:
        counts[f] = max(counts.get(f, 0), s)
    return Prepare(epoch, pair, batch, stamps(*pairs), delta(counts), committed_upto)


def counts_of(table) -> dict[int, int]:
    rows = table.live_rows()
    return dict(zip(table.flow_ids[rows].tolist(), table.state["count"][rows].tolist()))


__all__ = ["EPOCH", "EXPORT", "PAIR", "STATE_DTYPE", "counts_of", "delta", "prepare", "stamps"]
