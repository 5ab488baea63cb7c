"""flowcounter: the paper's per-flow packet and byte counter.

Synopsis
    Counts the packets and bytes (inner Ethernet frame length) of every flow,
    both directions together, and forwards everything unchanged. The simplest
    stateful NF: its state changes with every packet, so it exercises state
    replication at full rate.

Params
    none

State (per flow)
    packets   packets seen
    bytes     inner frame bytes seen

Counters
    packets    packets processed
    new_flows  flows seen for the first time

Example
    [nf]
    kind = "flowcounter"
    [nf.params]
"""

from __future__ import annotations

import numpy as np

from deft.nfs.base import Context, NetworkFunction, Params


class FlowCounter(NetworkFunction):
    name = "flowcounter"
    state_dtype = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
    counters = ("packets", "new_flows")

    def __init__(self, params: Params, ctx: Context):
        super().__init__(params, ctx)

    def process(self, batch, rows, new_rows, table, ctx):
        st = table.state
        # np.add.at, not "+=": a flow may have several packets in one batch.
        np.add.at(st["packets"], rows, 1)
        np.add.at(st["bytes"], rows, batch["frame_len"])
        self.stats["packets"] += len(batch)
        self.stats["new_flows"] += len(new_rows)
        verdict = np.zeros(len(batch), np.uint8)
        batch["verdict"] = verdict
        return verdict
