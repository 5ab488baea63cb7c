"""portscan: block sources that contact too many distinct (address, port) pairs.

Synopsis
    Per source address, the number of distinct destination (address, port)
    pairs it opened flows to in the last ``window_s`` seconds, counted across
    all instances in the global state (key ``portscan/<source address>``, a
    sliding-window set, see ``add_to_window`` in ``deft.runtime.consensus.kv``).
    A source whose count exceeds ``threshold`` is blocked on every instance:
    the packets of its flows, both directions, are dropped.

Params ([nf.params])
    threshold   default 20; a source with more pairs than this is blocked
    window_s    default 60; how long a pair counts

State (per flow)
    src       the flow's source: the sender of its first packet
    counted   1 once the flow's pair was submitted
    blocked   1 while its source is known to be over the threshold

Counters
    new_flows        flows counted (first packet seen)
    ops              global operations queued (one per distinct pair of a batch)
    blocked          packets dropped
    sources_blocked  times a source went over the threshold on this instance
    stale_results    op results that came back STALE (a replayed batch): the local replica decided

Example
    [nf]
    kind = "portscan"
    [nf.params]
    threshold = 20
    window_s = 60

How. A flow's first packet queues ``add_to_window(portscan/<src>, "<dst>:<dport>",
now, window)`` (global op; ICMP: port 0); its result, the source's count, is
known once the batch's entry is committed (``on_global_results``), and sets the
``blocked`` flag of all the source's flows here when it crosses the threshold
either way. Other packets are judged by their flow's flag (vectorised, no
global op). Blocks decided by other instances, and window expiry, reach
established flows through a refresh from the node's replica
(``ctx.globals.local``) every min(window / 8, 1 s) of packet time, one lookup
per distinct source of the table; a new flow of such a source learns it at
once from its own op's result.

Determinism. Only the refresh and the STALE fallback read the (possibly
stale) local replica; everything else depends on the batch, the table and
the committed results, which a replay of the batch gets again (same session
slot). ``rebuild`` recomputes the set of blocked sources from the table.
"""

from __future__ import annotations

import numpy as np

from deft.nfs.base import Context, FlowTable, NetworkFunction, Params, int_to_ipv4
from deft.runtime.dataplane.packet import DROP

_NS = 1_000_000_000
_MAX_WINDOW_S = 366 * 86400
_MEMO_MAX = 4096          # batches between process() and on_global_results() kept at most


def key_of(src: int) -> str:
    """The global key holding a source's window."""
    return f"portscan/{int_to_ipv4(src)}"


class PortScan(NetworkFunction):
    name = "portscan"
    uses_globals = True
    state_dtype = np.dtype([("src", "<u4"), ("counted", "u1"), ("blocked", "u1")])
    counters = ("new_flows", "ops", "blocked", "sources_blocked", "stale_results")

    def __init__(self, params: Params, ctx: Context):
        super().__init__(params, ctx)
        self.threshold = params.int("threshold", 20, min=0)
        window = params.float("window_s", 60)
        if not 0 < window <= _MAX_WINDOW_S:
            raise params.error("window_s", f"must be > 0 and <= {_MAX_WINDOW_S}, got {window}")
        self.window_ns = int(window * _NS)
        self.refresh_ns = max(min(self.window_ns // 8, _NS), 1)
        # Instance-wide, derived from the table (rebuild):
        self._blocked_srcs: set[int] = set()
        self._next_refresh = 0
        self._table_len = 0
        # batch stamp (flow_id, seq of its first packet) -> (rows, source of each op)
        self._memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ batch path

    def process(self, batch, rows, new_rows, table, ctx):
        n = len(batch)
        if n == 0:
            return np.zeros(0, np.uint8)
        if len(table) != self._table_len + len(new_rows):
            self.rebuild(table)       # rows came or went behind our back (import, expiry)
        now = int(batch["ts_ns"].max())          # == ctx.now_ns
        if now >= self._next_refresh:
            self._refresh(table, ctx, now)
        if len(new_rows):
            self._count_new(batch, rows, new_rows, table, ctx, now)
        self._table_len = len(table)
        blocked = table.state["blocked"][rows] != 0
        if len(ctx.globals) == 0:                # no op pending: these verdicts are final
            self.stats["blocked"] += int(np.count_nonzero(blocked))
        return blocked.astype(np.uint8) * np.uint8(DROP)

    def on_global_results(self, batch, results, table, ctx):
        memo = self._memo.pop(_stamp(batch), None)
        if memo is None:    # not processed by this object: judge by the flags (the refresh catches up)
            memo = (np.array([table.row_of(f) for f in batch["flow_id"].tolist()], np.int64),
                    np.zeros(0, np.uint32))
        rows, op_src = memo
        now = int(batch["ts_ns"].max())
        counts: dict[int, int] = {}
        for src, result in zip(op_src.tolist(), results):
            if isinstance(result, int) and not isinstance(result, bool):
                counts[src] = result             # the last op of a source is its newest count
            else:
                self.stats["stale_results"] += 1
                counts[src] = self._local_count(ctx, src, now)
        over = {s for s, c in counts.items() if c > self.threshold}
        self._set_blocked(table, rows, counts, over)
        blocked = (table.state["blocked"][rows] != 0) & (rows >= 0)
        self.stats["blocked"] += int(np.count_nonzero(blocked))
        verdict = blocked.astype(np.uint8) * np.uint8(DROP)
        batch["verdict"] = verdict
        return verdict

    # ------------------------------------------------------------------ rare path

    def _count_new(self, batch, rows, new_rows, table, ctx, now) -> None:
        """Submit the pair of every new flow (first packet), one op per distinct pair."""
        idx = np.flatnonzero(np.isin(rows, new_rows))
        uniq, first = np.unique(rows[idx], return_index=True)
        order = np.argsort(first)
        uniq, firsts = uniq[order], idx[first[order]]
        st = table.state
        srcs = batch["src_ip"][firsts]
        st["src"][uniq] = srcs
        st["counted"][uniq] = 1
        self.stats["new_flows"] += len(uniq)
        op_of: dict[tuple[str, str], int] = {}
        op_src: list[int] = []
        g = ctx.globals
        for src, dst, dport in zip(srcs.tolist(), batch["dst_ip"][firsts].tolist(),
                                   batch["dst_port"][firsts].tolist()):
            key, member = key_of(src), f"{int_to_ipv4(dst)}:{dport}"
            if (key, member) not in op_of:
                op_of[key, member] = g.add_to_window(key, member, now, self.window_ns)
                op_src.append(src)
        self.stats["ops"] += len(op_src)
        # Until the results are in, a new flow inherits what this instance knows of its source.
        st["blocked"][uniq] = np.isin(srcs, _as_array(self._blocked_srcs))
        if len(self._memo) >= _MEMO_MAX:         # results that never came (runtime dropped the batch)
            del self._memo[next(iter(self._memo))]
        self._memo[_stamp(batch)] = (rows.copy(), np.array(op_src, np.uint32))

    def _set_blocked(self, table: FlowTable, rows: np.ndarray, counts: dict[int, int], over: set[int]) -> None:
        """Flag the flows of the sources in ``counts``: those of the batch, and all of those that changed."""
        st = table.state
        decided = _as_array(set(counts))
        here = rows[np.isin(st["src"][rows], decided) & (st["counted"][rows] != 0)]
        st["blocked"][here] = np.isin(st["src"][here], _as_array(over))
        changed = {s for s in counts if (s in over) != (s in self._blocked_srcs)}
        if changed:
            self.stats["sources_blocked"] += len(changed & over)
            self._blocked_srcs = (self._blocked_srcs - changed) | (changed & over)
            live = table.live_rows()
            live = live[np.isin(st["src"][live], _as_array(changed)) & (st["counted"][live] != 0)]
            st["blocked"][live] = np.isin(st["src"][live], _as_array(over))
            table.mark_changed(live)

    def _refresh(self, table: FlowTable, ctx: Context, now: int) -> None:
        """Re-judge every source of the table from the node's replica (other instances, expiry)."""
        self._next_refresh = (now // self.refresh_ns + 1) * self.refresh_ns
        st = table.state
        live = table.live_rows()
        live = live[st["counted"][live] != 0]
        if not len(live):
            return
        srcs = np.unique(st["src"][live]).tolist()
        counts = {s: self._local_count(ctx, s, now) for s in srcs}
        over = {s for s, c in counts.items() if c > self.threshold}
        if over == self._blocked_srcs:
            return
        self.stats["sources_blocked"] += len(over - self._blocked_srcs)
        self._blocked_srcs = over
        flag = np.isin(st["src"][live], _as_array(over)).astype(np.uint8)
        moved = live[flag != st["blocked"][live]]
        st["blocked"][live] = flag
        table.mark_changed(moved)

    def _local_count(self, ctx: Context, src: int, now: int) -> int:
        window = ctx.globals.local(key_of(src))
        if not isinstance(window, dict):
            return 0
        cutoff = now - self.window_ns
        return sum(1 for t in window.values() if t >= cutoff)

    def rebuild(self, table: FlowTable) -> None:
        live = table.live_rows()
        st = table.state
        self._blocked_srcs = set(st["src"][live[st["blocked"][live] != 0]].tolist())
        self._next_refresh = 0
        self._table_len = len(table)


def _stamp(batch: np.ndarray) -> tuple[int, int]:
    return int(batch["flow_id"][0]), int(batch["seq"][0])


def _as_array(values: set[int]) -> np.ndarray:
    return np.fromiter(values, np.uint32, len(values))
