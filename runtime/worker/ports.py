"""What each helper of the NF worker may use of it: a narrow interface per helper, not the whole Worker.

The worker (``worker.py``) owns the loop, the slots and the shared objects; its helpers each
handle one protocol: the 2PC roles (``replica.py``), a take-over (``takeover.py``), batches
waiting for global results (``globalbatches.py``), hand-over freezes (``freeze.py``), bucket
moves (``bucketmove.py``) and forwarding (``forward.py``). Each gets the ``Worker`` typed as its
port below, and ``tests/unit/test_worker_ports.py`` checks that a helper touches nothing of the
worker its port does not name: a new dependency on the worker is a line here, read in review.

Counters (``count``: plain ints, published by the worker) and the log are in every port.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import zmq

    from deft.nfs.base import FlowTable
    from deft.runtime.config import NodeConfig
    from deft.runtime.dataplane.commit_record import CommitRecord
    from deft.runtime.dataplane.routes import RouteSnapshot
    from deft.runtime.replication.codec import Codec
    from deft.runtime.ring import Ring
    from deft.runtime.worker.pairslot import PairSlot


class _Counted(Protocol):
    count: dict[str, int]
    log: logging.Logger


class ReplicationPort(_Counted, Protocol):
    """``PrimaryRole`` and ``SecondaryRoles``: sockets and codec, release of decided batches through
    the commit record, what the egress has sent, the replicas' tables and copies."""

    cfg: NodeConfig
    codec: Codec
    zctx: zmq.Context
    egress: Ring
    record: CommitRecord
    last_release_end: int
    mover: Any   # bucketmove.Mover or None: told when a batch is decided

    def new_table(self) -> FlowTable: ...

    def on_duplicates(self, records: np.ndarray) -> None: ...

    def release_committed(self, pair: int, batch_id: int, records: np.ndarray,
                          index: np.ndarray | None) -> None: ...


class TakeOverPort(_Counted, Protocol):
    """``TakeOver``: the replica it takes, the state this worker handed over, a new slot, the replayed
    batches' release and global results."""

    secondaries: Any      # replica.SecondaryRoles
    shadows: dict[int, Any]
    globals: Any          # globalbatches.GlobalBatches or None
    record: CommitRecord
    first_release_of: int
    fencing: dict[int, Any]   # pair -> its TakeOver while the fence is out

    def new_slot(self, pair: int, n_pairs: int, **kw: Any) -> PairSlot: ...

    def replicate(self, slot: PairSlot, key: tuple, nodes: Any) -> None: ...

    def release_committed(self, pair: int, batch_id: int, records: np.ndarray,
                          index: np.ndarray | None) -> None: ...


class GlobalsPort(_Counted, Protocol):
    """``GlobalBatches``: the slots whose batch waits, and their release once the results are in."""

    cfg: NodeConfig
    index: int
    slots: dict[int, PairSlot]
    fencing: dict[int, Any]   # pairs whose slot waits for a take-over's fence, not for a batch

    def release_batch(self, slot: PairSlot, batch: np.ndarray, inputs: np.ndarray | None) -> None: ...


class FreezePort(_Counted, Protocol):
    """``Freezer`` (a hand-over's freeze) and ``Mover`` (a bucket move): the slots, the routes' epoch
    they act under (``refresh`` takes up a newer one), the input (``pull``), the commit record."""

    slots: dict[int, PairSlot]
    epoch: int
    record: CommitRecord

    def refresh(self) -> None: ...

    def pull(self, duplicates: bool = True) -> int: ...


class MovePort(FreezePort, Protocol):
    cfg: NodeConfig

    def forward_moved(self, pair: int, parts: list[np.ndarray]) -> None: ...


class ForwardPort(Protocol):
    """``Forwarder``: the route set the worker acts on and a context for its sockets."""

    count: dict[str, int]
    zctx: zmq.Context
    route_tables: RouteSnapshot | None
