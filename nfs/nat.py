"""nat: source NAT with per-flow port mappings.

Synopsis
    Packets leaving in the flow's initiator direction get their source address
    rewritten to ``public_ip`` and their source port (ICMP echo: identifier) to
    the port owned by the flow; IPv4 and L4 checksums are fixed incrementally.

Params ([nf.params])
    public_ip       required, dotted IPv4 address
    port_range      [lo, hi], default [10000, 60999]; split into disjoint slices,
                    one per instance (ctx.instance_index of ctx.instance_count),
                    so two instances never hand out the same public port
    idle_timeout_s  default 60; a flow silent for longer gives its port back

State (per flow)
    port      public port owned by the flow (0: none yet)
    init_dir  direction of the flow's first packet (the one that gets translated)
    last_ns   ingress timestamp of the flow's newest packet

Counters
    translated  packets rewritten
    new_flows   port mappings created
    expired     mappings ended by the idle timeout
    no_port     packets dropped because the instance's port slice is exhausted

Example
    [nf]
    kind = "nat"
    [nf.params]
    public_ip = "203.0.113.1"
    port_range = [10000, 60999]
    idle_timeout_s = 60

Port choice. Ports held by live flows are taken; the rest of the slice is
free. A new flow takes the first free port at or after ``ctx.random_u32(flow_id)``
(cyclically); if none is free its packets are dropped (no_port) and the flow is
not kept.

Expiry. Time advances in ticks of idle_timeout_s / 8, taken from the packets'
timestamps. When a batch's newest timestamp enters a new tick, every flow whose
last packet is older than (tick start - timeout) and that has no packet in the
batch is removed (``table.remove``) and its port is free again: a port comes
back between 1 and 1.125 timeouts after the flow's last packet. A flow whose
own packet arrives more than a timeout after its previous one chooses its port
afresh, exactly as if it had been removed.

Determinism. Everything above depends only on the table and the batch (a
skipped expiry scan is one that would have found nothing), so a secondary that
imported the table (``rebuild``) and replays the same batches makes the same
choices. The free-port bitmap is rebuilt from the table; an established packet
never touches it, a new flow costs one bitmap scan from its start, and an
exhausted pool is detected in O(1).

Reverse direction. Flow keys are symmetric and computed at ingress, so the
reverse packets this NF sees still carry the private addresses (they belong to
the same flow). They are forwarded unchanged. Inbound translation (packets
addressed to public_ip:port back to the private endpoint) would need a lookup
by public port, which the flow key does not provide: a known limitation.

Moved flows: a port goes with its flow. A flow whose bucket moves to another
pair keeps its port, and the port's ownership moves with it, so every port is
either held by one live flow or free at exactly one pair, and none is lost:

* the old pair forgets the flow and keeps a *lent* row for its port
  (``moved_out``): a row of its own (flow id ``LENT | port``) that holds the
  port for ever, so its pool never hands it out again;
* the new pair holds the port with the flow; when the flow ends there, a port
  from another pair's slice becomes an *owned* row (flow id ``OWNED | port``):
  free, and handed to a new flow once the pair's own slice is used up;
* a flow that moves back brings its port home: the lent row goes (``moved_in``).

These rows are rows like any other, so they are replicated with the state
clock and survive a take-over; they never move with a bucket (``movable``),
and no expiry takes them (they are dated ``PLACEHOLDER_NS``).

Cost. A batch is handled as numpy columns; a batch of at most ``FEW`` packets whose
flows all hold a mapping (a quiet worker's usual batch) in Python integers, with the same
result (``tests/unit/test_nf_nat.py`` runs both on the same streams), since numpy's fixed
cost per call is most of such a batch's.

Other limits. ICMP flows are keyed by addresses only, so two concurrent echo
sessions between the same hosts share one identifier mapping.
"""

from __future__ import annotations

import bisect

import numpy as np

from deft.nfs.base import Context, FlowTable, NetworkFunction, Params
from deft.nfs.checksum import FEW, rewrite_endpoint
from deft.runtime.dataplane.packet import DROP

_NS = 1_000_000_000
_MAX_TIMEOUT_S = 366 * 86400      # keeps last_ns + timeout far inside uint64
PLACEHOLDER_NS = 1 << 62          # "newest packet" of a lent or owned row: never idle
LENT = 1 << 62                    # flow id LENT | port: a port given away with its flow
OWNED = 1 << 61                   # flow id OWNED | port: another pair's port, free here
SYNTHETIC = OWNED                 # real flow ids are far below (stamping units: (u + 1) << 40 | k)


class Nat(NetworkFunction):
    name = "nat"
    state_dtype = np.dtype([("port", "<u2"), ("init_dir", "u1"), ("last_ns", "<u8")])
    counters = ("translated", "new_flows", "expired", "no_port")

    def __init__(self, params: Params, ctx: Context):
        super().__init__(params, ctx)
        self.public_ip = params.ipv4("public_ip")
        lo, hi = _port_range(params, params.list("port_range", [10000, 60999]))
        timeout = params.float("idle_timeout_s", 60)
        if not 0 < timeout <= _MAX_TIMEOUT_S:
            raise params.error("idle_timeout_s", f"must be > 0 and <= {_MAX_TIMEOUT_S}, got {timeout}")
        self.timeout_ns = int(timeout * _NS)
        # This instance's slice of [lo, hi]: contiguous, sizes differ by at most one.
        total, count, i = hi - lo + 1, ctx.instance_count, ctx.instance_index
        if not 0 <= i < count:
            raise ValueError(f"nat: instance index {i} outside 0..{count - 1}")
        if total < count:
            raise params.error("port_range", f"{total} ports cannot be split across {count} instances")
        size, extra = divmod(total, count)
        self.port_lo = lo + i * size + min(i, extra)
        self.n_ports = size + (1 if i < extra else 0)
        self.tick_ns = max(self.timeout_ns // 8, 1)
        # Instance-wide structures, derived from the table (see rebuild):
        self._free = np.ones(self.n_ports, bool)     # port_lo + k is held by no live flow
        self._n_free = self.n_ports
        self._owned: list[int] = []                 # other pairs' ports free here (owned rows), sorted
        self._cutoff = -1                           # flows idle before this are already gone
        self._table_len = 0                         # len(table) after our last batch

    # ------------------------------------------------------------------ batch path

    def process(self, batch, rows, new_rows, table, ctx):
        n = len(batch)
        verdict = np.zeros(n, np.uint8)
        if n == 0:
            return verdict
        if len(table) != self._table_len + len(new_rows):
            # Rows came or went behind our back (a state import, a migration): resync.
            self.rebuild(table)
        ts = batch["ts_ns"]
        now = int(ts.max())          # == ctx.now_ns, but taken from the batch itself: replay-safe
        cutoff = (now // self.tick_ns) * self.tick_ns - self.timeout_ns
        if cutoff > self._cutoff:
            self._expire(table, rows, cutoff)
        st = table.state
        if n <= FEW and self._established(batch, rows, st):
            return self._translate_few(batch, rows, st, verdict, table)
        port = st["port"][rows]
        # A packet needs a (new) mapping if its flow has none, or has been idle too long.
        # (unsigned: a timestamp older than last_ns, e.g. another ingress unit's clock, is no gap)
        need = (port == 0) | (ts > st["last_ns"][rows] + np.uint64(self.timeout_ns))
        dead = None
        if need.any():
            dead = self._assign(batch, rows, np.flatnonzero(need), table, ctx)
            port = st["port"][rows]
        ok = port != 0
        all_ok = dead is None or bool(ok.all())
        if not all_ok:
            verdict[~ok] = DROP
            self.stats["no_port"] += int(n - np.count_nonzero(ok))
        # Per-flow packets come in stamp order, so the last write per row is the newest stamp.
        if all_ok:
            st["last_ns"][rows] = ts
        else:
            st["last_ns"][rows[ok]] = ts[ok]
        fwd = batch["direction"] == st["init_dir"][rows]
        if not all_ok:
            fwd &= ok
        idx = np.flatnonzero(fwd)
        if len(idx):
            rewrite_endpoint(batch, idx, "src", self.public_ip, port[idx], icmp_ident=True)
            self.stats["translated"] += len(idx)
        if dead:
            table.remove(np.array(dead, np.int64))   # flows that never got a port
        self._table_len = len(table)
        batch["verdict"] = verdict
        return verdict

    # ------------------------------------------------------------------ a few packets

    def _established(self, batch, rows, st) -> bool:
        """Every packet's flow holds a port and was not idle past the timeout (no mapping to make)."""
        timeout = self.timeout_ns
        return all(p and t <= last + timeout for p, t, last in
                   zip(st["port"][rows].tolist(), batch["ts_ns"].tolist(), st["last_ns"][rows].tolist()))

    def _translate_few(self, batch, rows, st, verdict, table):
        """The batch path's result for a few packets of established flows, in Python integers: a
        quiet worker's batch is one or two packets, and the column path's fixed cost of numpy calls
        is then most of the batch's (``nfs/checksum.py`` FEW)."""
        last_ns, rows_l = st["last_ns"], rows.tolist()
        for row, t in zip(rows_l, batch["ts_ns"].tolist()):   # in stamp order: the newest write wins
            last_ns[row] = t
        ports, inits = st["port"], st["init_dir"]
        fwd = [j for j, (row, d) in enumerate(zip(rows_l, batch["direction"].tolist())) if d == inits[row]]
        if fwd:
            rewrite_endpoint(batch, np.array(fwd), "src", self.public_ip,
                             np.array([ports[rows_l[j]] for j in fwd], np.uint32), icmp_ident=True)
            self.stats["translated"] += len(fwd)
        self._table_len = len(table)
        batch["verdict"] = verdict
        return verdict

    # ------------------------------------------------------------------ rare path

    def _expire(self, table: FlowTable, rows: np.ndarray, cutoff: int) -> None:
        """Remove flows whose last packet is older than ``cutoff``, except those in this batch."""
        self._cutoff = cutoff
        if cutoff <= 0:
            return
        live = table.live_rows()
        st = table.state
        old = live[st["last_ns"][live] < np.uint64(cutoff)]
        if len(old):
            old = old[~np.isin(old, rows)]     # their own packets decide (see _assign)
        if len(old):
            ports = st["port"][old].copy()
            table.remove(old)
            self._release(table, ports)
            self.stats["expired"] += len(old)

    def _release(self, table: FlowTable, ports: np.ndarray) -> None:
        """Ports whose flows ended here: our own slice's are free again, another pair's become ours."""
        ports = ports[ports != 0].astype(np.int64)
        k = ports - self.port_lo
        mine = (k >= 0) & (k < self.n_ports)
        k = np.unique(k[mine])
        self._n_free += int(np.count_nonzero(~self._free[k]))
        self._free[k] = True
        for port in np.unique(ports[~mine]).tolist():   # moved in with its flow: owned here from now on
            if table.row_of(OWNED | port) < 0:
                _hold(table, OWNED | port, port)
                bisect.insort(self._owned, port)

    def _assign(self, batch, rows, need_idx, table, ctx) -> list[int] | None:
        """Give a port to every flow that needs one, in order of first appearance.

        Returns the rows that got none (to be removed once the batch is done), or None.
        """
        st = table.state
        uniq, first = np.unique(rows[need_idx], return_index=True)
        order = np.argsort(first)
        firsts = need_idx[first[order]]
        starts = ctx.random_u32(batch["flow_id"][firsts]) % np.uint32(self.n_ports)
        dead = []
        ended = []
        for row, i, start in zip(uniq[order].tolist(), firsts.tolist(), starts.tolist()):
            if st["port"][row]:
                # Idle past the timeout: the old mapping ends, the flow chooses afresh.
                self.stats["expired"] += 1
                ended.append(int(st["port"][row]))
                self._release_own(int(st["port"][row]))
                st["port"][row] = 0
            port = self._take(table, start)
            if port == 0:
                dead.append(row)
                continue
            t = int(batch["ts_ns"][i])
            st["port"][row] = port
            st["init_dir"][row] = batch["direction"][i]
            st["last_ns"][row] = t
            self.stats["new_flows"] += 1
        foreign = [p for p in ended if not self._is_own(p)]
        if foreign:   # after the loop: new rows may reallocate the table's arrays
            self._release(table, np.array(foreign, np.int64))
        return dead or None

    def _is_own(self, port: int) -> bool:
        return 0 <= port - self.port_lo < self.n_ports

    def _release_own(self, port: int) -> None:
        if self._is_own(port) and not self._free[port - self.port_lo]:
            self._free[port - self.port_lo] = True
            self._n_free += 1

    def _take(self, table: FlowTable, start: int) -> int:
        """Take the first free port of our slice at or after slot ``start``, cyclically; when the slice
        is used up, the lowest port we own from another pair; 0 if none."""
        if self._n_free == 0:
            if not self._owned:
                return 0
            port = self._owned.pop(0)
            table.remove(np.array([table.row_of(OWNED | port)], np.int64))
            return port
        free = self._free
        k = start + int(free[start:].argmax())      # argmax stops at the first True
        if not free[k]:
            k = int(free[:start].argmax()) if start else 0
            if not free[k]:                          # cannot happen while _n_free is right
                self._n_free = 0
                return 0
        free[k] = False
        self._n_free -= 1
        return self.port_lo + k

    def movable(self, table: FlowTable, rows: np.ndarray) -> np.ndarray:
        """Flows move with their buckets; lent and owned rows stay (they are this pair's)."""
        return rows[table.flow_ids[rows] < SYNTHETIC]

    def moved_out(self, table: FlowTable, rows: np.ndarray) -> None:
        """The flows went with their ports: forget them, keep a lent row per port (see Moved flows)."""
        ports = table.state["port"][rows].astype(np.int64)
        table.remove(rows)
        for port in np.unique(ports[ports != 0]).tolist():
            _hold(table, LENT | port, port)
        self.rebuild(table)

    def moved_in(self, table: FlowTable, rows: np.ndarray) -> None:
        """Flows came with their ports: a port this pair had lent comes home (its lent row goes)."""
        ports = np.unique(table.state["port"][rows])
        lent = [table.row_of(LENT | int(p)) for p in ports.tolist() if p]
        lent = [r for r in lent if r >= 0]
        if lent:
            table.remove(np.array(lent, np.int64))
        self.rebuild(table)

    def rebuild(self, table: FlowTable) -> None:
        """Recompute the free ports from the table (after a state import)."""
        live = table.live_rows()
        ids = table.flow_ids[live]
        ports = table.state["port"][live].astype(np.int64)
        owned = (ids & np.uint64(OWNED)) != 0      # (a lent row's id has the LENT bit only)
        k = ports[~owned] - self.port_lo
        self._free.fill(True)
        self._free[k[(k >= 0) & (k < self.n_ports)]] = False   # port 0 rows fall out here too
        self._n_free = int(np.count_nonzero(self._free))
        self._owned = sorted(ports[owned].tolist())
        self._cutoff = -1                 # scan at the next batch: finds nothing, or what is due
        self._table_len = len(table)


def _hold(table: FlowTable, flow_id: int, port: int) -> None:
    """A lent or owned row: the port, dated so that no expiry ever takes it."""
    rows, _ = table.rows_for(np.array([flow_id], np.uint64))
    table.state["port"][rows] = port
    table.state["last_ns"][rows] = PLACEHOLDER_NS
    table.last_ns[rows] = PLACEHOLDER_NS


def _port_range(params: Params, value: list) -> tuple[int, int]:
    if (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise params.error("port_range", f"expected [lo, hi] (two integers), got {value!r}")
    lo, hi = value
    if not 1 <= lo <= hi <= 65535:
        raise params.error("port_range", f"need 1 <= lo <= hi <= 65535, got [{lo}, {hi}]")
    return lo, hi
