"""A deterministic model NF and its input, for the replication simulation.

Per flow: a packet counter, a digest of the payloads in processing order,
and a NAT-like port. The port is the lowest one free when the flow's first
packet is processed, and is freed (the flow removed) at its last packet, so
which port a flow gets depends on the order of first and last packets
ACROSS flows: a replay that reorders anything, or a state that misses a
removal, hands out different ports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from deft.nfs.base import FlowTable

STATE_DTYPE = np.dtype([("count", "<u8"), ("port", "<u4"), ("digest", "<u8")])
FIRST_PORT = 1000
_MASK = (1 << 61) - 1


@dataclass(frozen=True, slots=True)
class Packet:
    """One input packet: its stamp, its place in the switch's order, its payload."""

    flow: int
    seq: int
    g: int          # global (switch) order; the model primaries process in this order
    value: int
    last: bool      # the flow's last packet: the NF removes the flow


Output = tuple[int, int, int, int, int]   # flow, seq, port, count, digest


def make_input(rng: random.Random, n_flows: int, max_len: int) -> list[Packet]:
    """Flows of 1..max_len packets, starting at random times and interleaved."""
    lengths = {f: rng.randint(1, max_len) for f in range(1, n_flows + 1)}
    sent = dict.fromkeys(lengths, 0)
    active: list[int] = []
    waiting = list(lengths)
    out: list[Packet] = []
    while active or waiting:
        if waiting and (not active or rng.random() < 0.3):
            active.append(waiting.pop(0))
        f = rng.choice(active)
        sent[f] += 1
        last = sent[f] == lengths[f]
        out.append(Packet(f, sent[f], len(out), rng.randrange(1 << 30), last))
        if last:
            active.remove(f)
    return out


def new_table() -> FlowTable:
    return FlowTable(STATE_DTYPE, capacity=8)


class ModelNF:
    """The NF: pure given (table, packets in order); ``rebuild`` derives the port pool from the table."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def rebuild(self, table: FlowTable) -> None:
        rows = table.live_rows()
        self.used = set(table.state["port"][rows].tolist())

    def process(self, table: FlowTable, packets: list[Packet]) -> list[Output]:
        if not packets:
            return []
        rows, _ = table.rows_for(np.array([p.flow for p in packets], dtype=np.uint64))
        st = table.state
        out: list[Output] = []
        ended: list[int] = []
        for p, row in zip(packets, rows.tolist()):
            count = int(st["count"][row]) + 1
            if count == 1:
                port = FIRST_PORT
                while port in self.used:
                    port += 1
                self.used.add(port)
                st["port"][row] = port
            port = int(st["port"][row])
            digest = (int(st["digest"][row]) * 1_000_003 + p.value) & _MASK
            st["count"][row] = count
            st["digest"][row] = digest
            out.append((p.flow, p.seq, port, count, digest))
            if p.last:
                self.used.discard(port)
                ended.append(row)
        if ended:
            table.remove(np.array(ended, dtype=np.int64))
        return out


def table_state(table: FlowTable) -> dict[int, tuple[int, int, int]]:
    rows = table.live_rows()
    st = table.state[rows]
    return {int(f): (int(c), int(p), int(d)) for f, c, p, d in
            zip(table.flow_ids[rows], st["count"], st["port"], st["digest"])}


def reference_run(packets: list[Packet]) -> tuple[dict[tuple[int, int], Output], dict]:
    """Failure-free run: every packet in switch order; outputs by stamp, final table."""
    table, nf = new_table(), ModelNF()
    outputs = nf.process(table, packets)
    return {(o[0], o[1]): o for o in outputs}, table_state(table)
