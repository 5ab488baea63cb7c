"""After a planned hand-over the old primary forwards to the new one what it did not process.

The paper's migration step (section V): "A forwards its buffered packets of S
... and in-flight packets too". A frozen pair holds the packets that arrive
for it unprocessed (``freeze.py``); when the routes hand the pair to its
secondary, the old primary sends those packets to the pair's new primary's
fabric PULL as ordinary packets, and so does any worker with packets of a
pair another worker serves (``Worker.on_strays``). The new primary's
ordering puts them in their place (or drops them as stale when a copy it
held came first), so a packet whose copy went to an earlier secondary (the
io switched routes a moment after the worker did) is not lost. Forwarding needs ``[node] fabric``
on the new primary's node; without it (or with its queue full) the packets
are counted as ``forward_dropped``.
"""

from __future__ import annotations

import numpy as np
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.packet import empty_batch
from deft.runtime.dataplane.routes import NONE
from deft.runtime.params import endpoint_of
from deft.runtime.sockets import make_socket
from deft.runtime.worker.ports import ForwardPort

HWM = 64


class Forwarder:
    def __init__(self, worker: ForwardPort):
        self.worker = worker
        self.socks: dict[str, zmq.Socket] = {}

    def forward(self, pair: int, records, unless_to: tuple[str, int] | None = None, copies: bool = False) -> bool:
        """Send ``records`` (unprocessed packets of ``pair``: an array or a list of them) to the pair's
        primary in the routes the worker acts on; False (nothing sent, nothing counted) if that is
        ``unless_to`` or the routes name none (``unless_to=None``: counted as dropped then).
        ``copies``: and a copy of each to the pair's secondary (a bucket move: theirs went to the old
        pair's secondary). The records go labelled with ``pair``."""
        c = self.worker.count
        routes = self.worker.route_tables   # the whole route set the worker acts on (refresh's)
        target = copy_to = None
        if routes is not None and pair < routes.n_pairs:
            pn, pi, sn, si = (int(x) for x in routes.table[pair][:4])
            nodes = routes.nodes()
            if pn != NONE and pn < len(nodes) and nodes[pn][1] and (nodes[pn][0], pi) != unless_to:
                target = (endpoint_of(nodes[pn][1], pi), pi, routes.epoch)
                if copies and sn != NONE and sn < len(nodes) and nodes[sn][2]:
                    copy_to = (endpoint_of(nodes[sn][2], si), si)
        if target is None:
            if unless_to is not None:
                return False
            c["forward_dropped"] += len(records) if isinstance(records, np.ndarray) else sum(map(len, records))
            return True
        records = as_packets(records)
        if not len(records):
            return True
        endpoint, instance, epoch = target
        records["pair"] = pair   # a bucket move's packets still carry the pair they were stamped for
        if copy_to is not None:   # before the packets, as the io sends them
            records["dup"] = 1
            self.send(copy_to[0], zmq.DEALER, wire.COPIES, epoch, copy_to[1], records)
        records["dup"] = 0   # a copy held here (taken over, then handed on) travels as a packet
        sent = self.send(endpoint, zmq.PUSH, wire.PACKETS, epoch, instance, records)
        c["forward_dropped"] += len(records) - sent
        c["forwarded"] += sent
        return True

    def send(self, endpoint: str, kind: int, what: bytes, epoch: int, instance: int, records: np.ndarray) -> int:
        """How many of ``records`` went (the rest found the socket's queue full: that node is gone or far
        behind)."""
        sock = self.socks.get(endpoint)
        if sock is None:
            sock = self.socks[endpoint] = make_socket(self.worker.zctx, kind, connect=endpoint, hwm=HWM)
        sent = 0
        try:
            for start in range(0, len(records), 256):
                part = records[start: start + 256]
                sock.send_multipart(wire.encode_packets(epoch, instance, part, kind=what), zmq.NOBLOCK, copy=False)
                sent += len(part)
        except zmq.Again:
            pass
        return sent

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=200)   # what was forwarded last should still leave


def as_packets(parts) -> np.ndarray:
    """One PACKET_DTYPE array (the wire's byte layout) from an array or a list of them; a copy.
    (``np.concatenate`` and ``.copy()`` of a field-selected view may drop the dtype's padding.)"""
    if isinstance(parts, np.ndarray):
        parts = [parts]
    out = empty_batch(sum(len(p) for p in parts))
    k = 0
    for part in parts:
        out[k: k + len(part)] = part
        k += len(part)
    return out
