"""Running an NF's global operations: one batch's sequence, and an in-process commit.

``run_batch`` is what a runtime does with one NF batch: ``process``, take the
queued global ops, commit them (a callable: the Raft path, or ``LocalGlobals``),
then ``on_global_results``. ``LocalGlobals`` is a ``GlobalOps`` whose commit
applies the ops at once, through the same ``batch_entry`` and
``KVStateMachine.apply`` as the replicated path (so session dedup is the real
one): tests drive NFs end to end with it, and a node without Raft may use it.
Several ``LocalGlobals`` may share one ``KVStateMachine``, like instances
sharing the cluster's global state; give each its own client id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from deft.nfs.base import Context, FlowTable, GlobalOp, GlobalOps, NetworkFunction
from deft.runtime.consensus.kv import KVStateMachine, batch_entry, batch_results

Commit = Callable[[Sequence[GlobalOp]], list[Any]]


class LocalGlobals(GlobalOps):
    """Global ops committed at once against an in-process ``KVStateMachine``."""

    def __init__(self, kv: KVStateMachine | None = None, client: str = "local"):
        super().__init__()
        self.kv = KVStateMachine() if kv is None else kv
        self.client = client
        self.next_seq = 1

    @property  # type: ignore[override]
    def replica(self) -> Mapping[str, Any]:
        return MappingProxyType(self.kv.data)   # live: restore() may have replaced the dict

    @replica.setter
    def replica(self, _value: Mapping[str, Any]) -> None:
        pass                                    # always this state machine's data

    def commit(self, ops: Sequence[GlobalOp], seq: int | None = None) -> list[Any]:
        """Apply ``ops`` as the batch entry ``(client, seq)`` (default: the next seq); the results.

        Passing an earlier ``seq`` re-proposes that batch, as a secondary replaying it would.
        """
        if seq is None:
            seq = self.next_seq
        self.next_seq = max(self.next_seq, seq + 1)
        return batch_results(self.kv.apply(batch_entry(self.client, seq, ops)), len(ops))


def run_batch(nf: NetworkFunction, batch: np.ndarray, rows: np.ndarray, new_rows: np.ndarray,
              table: FlowTable, ctx: Context, commit: Commit | None = None) -> np.ndarray:
    """process -> take -> commit -> on_global_results; the batch's final verdicts.

    ``commit`` defaults to ``ctx.globals.commit`` (a ``LocalGlobals``).
    """
    verdict = nf.process(batch, rows, new_rows, table, ctx)
    ops = ctx.globals.take()
    if not ops:
        return verdict
    if commit is None:
        commit = ctx.globals.commit  # type: ignore[attr-defined]
    return nf.on_global_results(batch, commit(ops), table, ctx)
