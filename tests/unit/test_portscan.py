"""portscan: a global-state NF driven end to end (process -> take -> commit -> on_global_results)."""

from __future__ import annotations

import itertools
import tomllib
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from deft.nfs.base import STALE, Context, GlobalOps, Params, ipv4_to_int
from deft.nfs.globals import LocalGlobals, run_batch
from deft.nfs.portscan import PortScan
from deft.nfs.registry import make_nf
from deft.runtime.consensus import kv as kvmod
from deft.runtime.consensus.kv import KVStateMachine
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import DROP, FORWARD, IPPROTO_UDP
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCANNER, CLIENT, VICTIM = ipv4_to_int("192.0.2.66"), ipv4_to_int("10.0.0.7"), ipv4_to_int("10.0.0.5")
S = 1_000_000_000
_fid = itertools.count(1)


class Flows:
    """Flow ids per (src, sport, dst, dport) and per-flow seqs, as a stamping unit would give them."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}
        self.seq: dict[int, int] = {}

    def batch(self, pkts, ts_ns):
        """pkts: (src, sport, dst, dport); UDP; the reverse direction shares the flow id."""
        frames, ids = [], []
        for src, sport, dst, dport in pkts:
            key = (src, sport, dst, dport)
            rev = (dst, dport, src, sport)
            f = self.ids.get(key) or self.ids.get(rev)
            if f is None:
                f = self.ids[key] = next(_fid)
            ids.append(f)
            frames.append(vxlan_wrap(build_frame(src, dst, IPPROTO_UDP, sport, dport, b"x"), 1))
        recs, _ = records_from_datagrams(frames, ts_ns)
        recs["flow_id"] = ids
        seqs = []
        for f in ids:
            self.seq[f] = self.seq.get(f, 0) + 1
            seqs.append(self.seq[f])
        recs["seq"] = seqs
        return recs


class Instance:
    """One PortScan instance whose global ops commit against a (shared) KVStateMachine."""

    def __init__(self, kv, client, **params):
        self.g = LocalGlobals(kv, client)
        self.ctx = Context(global_ops=self.g)
        self.nf = make_nf("portscan", Params(params), self.ctx)
        self.table = self.nf.new_table(8)

    def run(self, b, seq=None):
        rows, new_rows = self.table.rows_for(b["flow_id"])
        self.ctx.now_ns = int(b["ts_ns"].max())
        commit = None if seq is None else partial(self.g.commit, seq=seq)
        v = run_batch(self.nf, b, rows, new_rows, self.table, self.ctx, commit)
        assert v.dtype == np.uint8 and len(v) == len(b)
        return v


def scan(flows, ports, ts, src=SCANNER):
    return flows.batch([(src, 40000, VICTIM, p) for p in ports], ts)


def test_scanner_is_blocked_after_threshold_a_normal_client_is_not():
    kv = KVStateMachine()
    a = Instance(kv, "nf0", threshold=20)
    flows = Flows()
    verdicts = []
    for i in range(6):                                      # 30 ports, 5 per batch
        b = scan(flows, range(1 + 5 * i, 6 + 5 * i), S + i * 1000)
        verdicts += a.run(b).tolist()
        client = flows.batch([(CLIENT, 5555, VICTIM, 443), (VICTIM, 443, CLIENT, 5555),
                              (CLIENT, 5556, VICTIM, 80)], S + i * 1000)
        assert (a.run(client) == FORWARD).all()
    assert verdicts == [FORWARD] * 20 + [DROP] * 10
    window = kv.data["portscan/192.0.2.66"]
    assert sorted(window) == sorted(f"10.0.0.5:{p}" for p in range(1, 31))
    assert len(kv.data["portscan/10.0.0.7"]) == 2                     # 443 and 80
    # The scanner's established flows are blocked too, both directions; no op for them.
    old = flows.batch([(SCANNER, 40000, VICTIM, 1), (VICTIM, 1, SCANNER, 40000)], S + 10_000)
    assert (a.run(old) == DROP).all()
    assert a.nf.stats["new_flows"] == 30 + 2 and a.nf.stats["ops"] == 32
    assert a.nf.stats["sources_blocked"] == 1
    assert a.nf.stats["blocked"] == 10 + 2


def test_block_reaches_every_instance():
    kv = KVStateMachine()
    a, b = Instance(kv, "nf0", threshold=20), Instance(kv, "nf1", threshold=20)
    flows = Flows()
    assert (a.run(scan(flows, range(1, 16), S)) == FORWARD).all()        # 15 on instance a
    assert (b.run(scan(flows, range(16, 21), S)) == FORWARD).all()       # 20 in all: at the threshold
    client_a = flows.batch([(CLIENT, 5555, VICTIM, 443)], S)
    assert (a.run(client_a) == FORWARD).all()
    assert (b.run(scan(flows, [21], S + 1)) == DROP).all()               # 21 > 20, counted across both
    assert (a.run(scan(flows, [22], S + 2)) == DROP).all()               # a's own next flow knows at once
    # a's established scanner flows: blocked by the refresh from the replica (1 s of packet time) ...
    est = scan(flows, [3], S + 3)
    assert (a.run(est) == DROP).all()                                     # (a crossed it itself above)
    est_b = scan(flows, [16], S + 3)
    assert (b.run(est_b) == DROP).all()
    # ... and on an instance that never saw the crossing itself:
    c = Instance(kv, "nf2", threshold=20)
    assert (c.run(flows.batch([(SCANNER, 1, VICTIM, 9999)], S + 4)) == DROP).all()
    # the normal client stays untouched everywhere
    assert (a.run(flows.batch([(CLIENT, 5555, VICTIM, 443)], S + 2 * S)) == FORWARD).all()


def test_established_flows_learn_a_block_decided_elsewhere_at_the_next_refresh():
    kv = KVStateMachine()
    a, b = Instance(kv, "nf0", threshold=5), Instance(kv, "nf1", threshold=5)
    flows = Flows()
    assert (a.run(scan(flows, [1, 2], S)) == FORWARD).all()
    assert (b.run(scan(flows, range(3, 9), S)) == DROP).all()            # 8 > 5, decided on b
    again = scan(flows, [1, 2], S + 1000)                                 # a: established, no op
    assert (a.run(again) == FORWARD).all()                                # not refreshed yet
    later = scan(flows, [1, 2], S + 1000 + S)
    assert (a.run(later) == DROP).all()
    assert a.ctx.globals.take() == []


def test_window_expiry_uncounts():
    kv = KVStateMachine()
    a = Instance(kv, "nf0", threshold=5, window_s=10)
    flows = Flows()
    assert (a.run(scan(flows, range(1, 6), S)) == FORWARD).all()          # 5: at the threshold
    assert (a.run(scan(flows, range(6, 11), 12 * S)) == FORWARD).all()    # the first 5 expired
    assert len(kv.data["portscan/192.0.2.66"]) == 5
    assert (a.run(scan(flows, [11], 13 * S)) == DROP).all()               # 6 within 10 s
    # Blocked until the window has passed, then the refresh unblocks its established flows.
    assert (a.run(scan(flows, [6], 20 * S)) == DROP).all()
    assert (a.run(scan(flows, [6], 24 * S)) == FORWARD).all()             # newest pair seen at 13 s


def test_replayed_batch_is_applied_once_g4():
    """A secondary replays a batch under the same (client, seq): first results, no double count."""
    kv = KVStateMachine()
    primary = Instance(kv, "pair3", threshold=20)
    flows = Flows()
    assert (primary.run(scan(flows, range(1, 19), S), seq=1) == FORWARD).all()
    replicated = primary.table.export_rows(primary.table.live_rows())   # what the secondary holds
    b = scan(flows, range(19, 25), 2 * S)                                 # 19..24: crosses 20
    b_copy = b.copy()
    v1 = primary.run(b, seq=2)
    assert (v1 == DROP).all()
    before = kv.snapshot()
    # The secondary (same session client: the pair's) replays batch 2 from the state before it.
    secondary = Instance(kv, "pair3", threshold=20)
    secondary.table.import_records(replicated)
    secondary.nf.rebuild(secondary.table)
    ops_seen = []
    real_commit = secondary.g.commit

    def commit(ops, seq=None):
        ops_seen.append(list(ops))
        return real_commit(ops, seq=2)

    rows, new_rows = secondary.table.rows_for(b_copy["flow_id"])
    v2 = run_batch(secondary.nf, b_copy, rows, new_rows, secondary.table, secondary.ctx, commit)
    assert (v2 == v1).all()
    assert kv.snapshot() == before                                        # nothing applied twice
    assert len(ops_seen[0]) == 6
    assert secondary.g.commit(ops_seen[0], seq=2) == primary.g.commit(ops_seen[0], seq=2)
    assert kv.snapshot() == before
    # Once the pair's next batch is applied, a replay of batch 2 is STALE: no effect, and the
    # NF falls back to the replica for its verdicts.
    primary.run(scan(flows, [30], 3 * S), seq=3)
    after = kv.snapshot()
    late = Instance(kv, "pair3", threshold=20)
    assert late.g.commit(ops_seen[0], seq=2) == [STALE] * 6
    v3 = late.run(b_copy.copy(), seq=2)
    assert (v3 == DROP).all() and late.nf.stats["stale_results"] == 6
    assert kv.snapshot() == after


def test_established_flows_need_no_global_op():
    nf = PortScan(Params({}), Context())
    table = nf.new_table(4)
    flows = Flows()
    b = scan(flows, [1, 2], S)
    rows, new_rows = table.rows_for(b["flow_id"])
    assert (nf.process(b, rows, new_rows, table, nf.ctx) == FORWARD).all()
    ops = nf.ctx.globals.take()
    assert ops == [("add_to_window", "portscan/192.0.2.66", ("10.0.0.5:1", S, 60 * S)),
                   ("add_to_window", "portscan/192.0.2.66", ("10.0.0.5:2", S, 60 * S))]
    b = scan(flows, [1, 2, 1], S + 5)
    rows, new_rows = table.rows_for(b["flow_id"])
    assert len(new_rows) == 0
    assert (nf.process(b, rows, new_rows, table, nf.ctx) == FORWARD).all()
    assert nf.ctx.globals.take() == []


def test_two_flows_to_one_pair_make_one_op():
    a = Instance(KVStateMachine(), "nf0")
    flows = Flows()
    b = flows.batch([(SCANNER, 1000, VICTIM, 80), (SCANNER, 1001, VICTIM, 80)], S)
    a.run(b)
    assert a.nf.stats["ops"] == 1 and a.nf.stats["new_flows"] == 2


def test_global_ops_collector():
    g = GlobalOps()
    assert g.incr("n", 2) == 0 and g.add_to_set("s", "x") == 1 and g.compare_and_set("k", None, 1) == 2
    assert g.get("k") == 3 and g.add_to_window("w", "m", 5, 10) == 4 and len(g) == 5
    assert g.local("k") is None and g.local("k", 7) == 7
    ops = g.take()
    assert [op for op, _, _ in ops] == ["incr", "add_to_set", "compare_and_set", "get", "add_to_window"]
    assert g.take() == [] and len(g) == 0
    with pytest.raises(TypeError):
        g.incr(3)
    lg = LocalGlobals(client="t")
    assert lg.commit(ops) == [2, True, True, 1, 1]
    assert lg.local("n") == 2 and lg.replica["s"] == ["x"]
    with pytest.raises(TypeError):
        lg.replica["n"] = 3                                 # read-only view
    assert STALE == kvmod.STALE


def test_ops_never_taken_fail_instead_of_growing(monkeypatch):
    monkeypatch.setattr(GlobalOps, "MAX_PENDING", 3)
    g = GlobalOps()
    for _ in range(3):
        g.incr("n")
    with pytest.raises(RuntimeError, match="take"):
        g.incr("n")
    g.take()
    g.incr("n")


@pytest.mark.parametrize("params", [{"threshold": -1}, {"window_s": 0}, {"window_s": "60"}, {"bogus": 1}])
def test_bad_params(params):
    with pytest.raises(ConfigError):
        make_nf("portscan", Params(params, source="ps.toml"), Context())


def test_example_config_builds():
    cfg = tomllib.loads((EXAMPLES / "portscan.toml").read_text())
    nf = make_nf(cfg["nf"]["kind"], Params(cfg["nf"]["params"]), Context())
    assert isinstance(nf, PortScan) and nf.uses_globals and nf.threshold == 20
