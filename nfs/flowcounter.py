"""flowcounter: the paper's per-flow packet and byte counter.

Synopsis
    Counts the packets and bytes (inner Ethernet frame length) of every flow,
    both directions together, and forwards everything unchanged. The simplest
    stateful NF: its state changes with every packet, so it exercises state
    replication at full rate.

Params
    global_updates_per_batch   default 0; queue this many global increments
                               (``flowcounter/updates/<i>``, by the call's packet
                               count) per NF call: a benchmark load for the global
                               state (benchmarks/global_updates.py); 0 = none

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
        self.global_updates = params.int("global_updates_per_batch", 0, min=0, max=1000)
        self.uses_globals = self.global_updates > 0   # per instance: the runtime reads the NF object's
        self._keys = [f"flowcounter/updates/{i}" for i in range(self.global_updates)]

    def process(self, batch, rows, new_rows, table, ctx):
        st = table.state
        # np.add.at, not "+=": a flow may have several packets in one batch.
        np.add.at(st["packets"], rows, 1)
        np.add.at(st["bytes"], rows, batch["frame_len"])
        self.stats["packets"] += len(batch)
        self.stats["new_flows"] += len(new_rows)
        verdict = np.zeros(len(batch), np.uint8)
        batch["verdict"] = verdict
        for key in self._keys:
            ctx.globals.incr(key, len(batch))
        return verdict

    def on_global_results(self, batch, results, table, ctx):
        return np.zeros(len(batch), np.uint8)    # the counts change nothing here: everything forwarded
