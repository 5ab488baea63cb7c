"""nat: translation, checksums, port uniqueness and partitioning, idle reuse, determinism."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from deft.nfs.base import Context, Params, ipv4_to_int
from deft.nfs.nat import Nat
from deft.nfs.registry import make_nf
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import (
    DROP,
    FORWARD,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st

from .reference_checksums import assert_checksums

PUBLIC = "203.0.113.1"
SERVER = ipv4_to_int("93.184.216.34")
S = 1_000_000_000
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# ---------------------------------------------------------------- helpers





class Flows:
    """Builds batches and stamps them with per-5-tuple flow ids (both directions alike)."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}

    def batch(self, pkts, ts=S) -> np.ndarray:
        """pkts: (src_ip, sport, dst_ip, dport, proto) tuples; ts scalar or one per packet."""
        frames = [vxlan_wrap(build_frame(s, d, p, sp, dp, b"payload"), 5) for s, sp, d, dp, p in pkts]
        recs, drops = records_from_datagrams(frames)
        assert not drops.any()
        recs["ts_ns"] = ts
        for i, r in enumerate(recs.tolist()):
            # the parsed fields, as a stamping unit sees them (ICMP: ports 0)
            f = dict(zip(recs.dtype.names, r))
            key = (f["proto"], *sorted([(f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])]))
            recs["flow_id"][i] = self.ids.setdefault(key, 1000 + len(self.ids))
        return recs


def run(nf, table, batch, ctx=None):
    ctx = ctx or nf.ctx
    rows, new_rows = table.rows_for(batch["flow_id"])
    ctx.now_ns = int(batch["ts_ns"].max())
    verdict = nf.process(batch, rows, new_rows, table, ctx)
    assert verdict.dtype == np.uint8 and len(verdict) == len(batch)
    return verdict


def nat(ports=(10000, 60999), timeout=60, index=0, count=1, seed=0):
    ctx = Context(instance_index=index, instance_count=count, seed=seed)
    nf = Nat(Params({"public_ip": PUBLIC, "port_range": list(ports), "idle_timeout_s": timeout}), ctx)
    return nf, nf.new_table(64)


def client(i):
    return (ipv4_to_int("10.0.0.1") + i, 1024 + i % 60000)


def out_pkts(n, first=0, proto=IPPROTO_TCP):
    return [(*client(first + i), SERVER, 443, proto) for i in range(n)]


def live_ports(nf, table):
    return table.state["port"][table.live_rows()]


# ---------------------------------------------------------------- translation

@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP])
def test_initiator_packets_translated_with_valid_checksums(proto):
    nf, table = nat()
    flows = Flows()
    b = flows.batch([(*client(i), SERVER, 443 if proto != IPPROTO_ICMP else 7, proto) for i in range(8)])
    verdict = run(nf, table, b)
    assert (verdict == FORWARD).all()
    for rec in b:
        frame = bytes(rec["frame"][: rec["frame_len"]])
        assert_checksums(frame)
        assert struct.unpack("!I", frame[26:30])[0] == ipv4_to_int(PUBLIC) == rec["src_ip"]
        port = struct.unpack("!H", frame[34:36] if proto != IPPROTO_ICMP else frame[38:40])[0]
        assert 10000 <= port <= 60999
        assert rec["src_port"] == (0 if proto == IPPROTO_ICMP else port)
        assert table.state["port"][table.row_of(rec["flow_id"])] == port
    assert nf.stats["translated"] == 8 and nf.stats["new_flows"] == 8


def test_reverse_packets_untouched_and_port_constant_per_flow():
    nf, table = nat()
    flows = Flows()
    out = out_pkts(5)
    run(nf, table, flows.batch(out))
    ports = [table.state["port"][table.row_of(f)] for f in sorted(flows.ids.values())]
    back = flows.batch([(d, dp, s, sp, p) for s, sp, d, dp, p in out], ts=2 * S)
    before = back.copy()
    assert (run(nf, table, back) == FORWARD).all()
    assert (back["frame"] == before["frame"]).all()
    assert (back["src_ip"] == before["src_ip"]).all() and (back["dst_port"] == before["dst_port"]).all()
    # Later initiator packets of the same flows (mixed with replies in one batch) keep their ports.
    mixed = flows.batch(out + [(d, dp, s, sp, p) for s, sp, d, dp, p in out] + out, ts=3 * S)
    run(nf, table, mixed)
    got = mixed["src_port"][:5].tolist()
    assert got == ports and mixed["src_port"][10:].tolist() == ports
    assert nf.stats["new_flows"] == 5


def test_udp_without_checksum_stays_without():
    nf, table = nat()
    f = bytearray(build_frame(ipv4_to_int("10.0.0.9"), SERVER, IPPROTO_UDP, 5353, 53, b"q"))
    f[40:42] = b"\0\0"
    recs, _ = records_from_datagrams([vxlan_wrap(bytes(f), 1)], ts_ns=S)
    recs["flow_id"] = 1
    run(nf, table, recs)
    assert bytes(recs[0]["frame"][40:42]) == b"\0\0"
    assert recs["src_ip"][0] == ipv4_to_int(PUBLIC)


# ---------------------------------------------------------------- ports

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 150), min_size=50, max_size=300),
       st.lists(st.tuples(st.integers(1, 40), st.integers(0, 8)), max_size=12))
def test_ports_unique_among_live_flows(clients, cuts):
    """Random flows, batch sizes and clock steps (timeout 5 s): live flows never share a port."""
    nf, table = nat(ports=(20000, 20099), timeout=5)
    flows = Flows()
    pkts = [(*client(c), SERVER, 80, IPPROTO_UDP) for c in clients]
    start, now = 0, S
    for cut, step in cuts + [(len(pkts), 1)]:
        part = pkts[start:start + cut]
        start += cut
        now += step * S
        if not part:
            continue
        b = flows.batch(part, ts=now)
        v = run(nf, table, b)
        ports = live_ports(nf, table)
        assert len(ports) == len(set(ports.tolist()))
        assert ((ports >= 20000) & (ports <= 20099)).all()
        for rec, verdict in zip(b, v):          # each packet carries its flow's current port
            if verdict == FORWARD:
                assert rec["src_port"] == table.state["port"][table.row_of(rec["flow_id"])]
        assert nf._n_free == 100 - len(ports)   # the bitmap agrees with the table
    assert nf.stats["no_port"] + nf.stats["translated"] == len(pkts)


def test_flow_removed_behind_its_back_frees_its_port():
    nf, table = nat(ports=(40000, 40001))
    flows = Flows()
    run(nf, table, flows.batch(out_pkts(2)))
    table.remove(np.array([table.row_of(flows.ids[next(iter(flows.ids))])]))   # e.g. migrated away
    assert (run(nf, table, flows.batch(out_pkts(1, first=5))) == FORWARD).all()
    assert len(table) == 2


def test_instances_get_disjoint_slices_covering_the_range():
    slices = []
    for i in range(3):
        nf, _ = nat(ports=(1000, 1009), index=i, count=3)
        slices.append(set(range(nf.port_lo, nf.port_lo + nf.n_ports)))
    assert [len(s) for s in slices] == [4, 3, 3]
    assert set().union(*slices) == set(range(1000, 1010))
    assert sum(len(s) for s in slices) == 10


def test_two_instances_never_share_a_port():
    a, ta = nat(ports=(30000, 30199), index=0, count=2)
    b, tb = nat(ports=(30000, 30199), index=1, count=2)
    flows = Flows()
    pkts = out_pkts(180)
    run(a, ta, flows.batch(pkts[0::2]))
    run(b, tb, flows.batch(pkts[1::2]))
    pa, pb = set(live_ports(a, ta).tolist()), set(live_ports(b, tb).tolist())
    assert len(pa) == len(pb) == 90
    assert not pa & pb
    assert max(pa) < min(pb)


def test_pool_exhaustion_drops_and_counts():
    nf, table = nat(ports=(40000, 40003))
    b = Flows().batch(out_pkts(6))
    before = b.copy()
    verdict = run(nf, table, b)
    dropped = verdict == DROP
    assert dropped.sum() == 2
    assert nf.stats["no_port"] == 2 and nf.stats["new_flows"] == 4
    assert len(table) == 4                      # flows without a port are not kept
    assert sorted(live_ports(nf, table).tolist()) == [40000, 40001, 40002, 40003]
    assert (b["frame"][dropped] == before["frame"][dropped]).all()


def test_idle_flows_give_their_ports_back():
    nf, table = nat(ports=(40000, 40003), timeout=10)            # expiry ticks of 1.25 s
    flows = Flows()
    run(nf, table, flows.batch(out_pkts(4), ts=1 * S))
    run(nf, table, flows.batch(out_pkts(1), ts=5 * S))          # flow 0 stays busy
    # Before the timeout: still exhausted.
    assert (run(nf, table, flows.batch(out_pkts(1, first=10), ts=10 * S)) == DROP).all()
    assert nf.stats["expired"] == 0
    # From the first tick after 1 s + timeout, the idle flows' ports are free again.
    v = run(nf, table, flows.batch(out_pkts(3, first=10), ts=13 * S))
    assert (v == FORWARD).all()
    assert nf.stats["expired"] == 3
    ports = live_ports(nf, table)
    assert len(ports) == len(set(ports.tolist())) == 4
    busy = flows.batch(out_pkts(1), ts=14 * S)                  # flow 0 keeps its mapping
    run(nf, table, busy)
    assert busy["src_ip"][0] == ipv4_to_int(PUBLIC)
    assert nf.stats["new_flows"] == 4 + 3


def test_flow_back_after_timeout_gets_a_fresh_mapping_and_sweep_collects():
    nf, table = nat(ports=(40000, 40999), timeout=5)
    flows = Flows()
    run(nf, table, flows.batch(out_pkts(3), ts=1 * S))
    assert len(table) == 3
    run(nf, table, flows.batch(out_pkts(1), ts=100 * S))   # flow 0 returns; the sweep drops 1 and 2
    assert nf.stats["new_flows"] == 4
    assert len(table) == 1 and nf.stats["expired"] == 3


# ---------------------------------------------------------------- determinism

def stream(n_batches=6, per_batch=40, seed=1):
    rng = np.random.default_rng(seed)
    flows = Flows()
    out = []
    for k in range(n_batches):
        clients = rng.integers(0, 120, per_batch)
        out.append(flows.batch([(*client(int(c)), SERVER, 80, IPPROTO_TCP) for c in clients],
                               ts=(k + 1) * 4 * S + np.arange(per_batch)))
    return out


def test_same_packets_same_ports():
    results = []
    for _ in range(2):
        nf, table = nat(ports=(50000, 50059), timeout=10, seed=7)
        ports = []
        for b in stream():
            b = b.copy()
            run(nf, table, b)
            ports.append(b["src_port"].copy())
        results.append(np.concatenate(ports))
    assert (results[0] == results[1]).all()


STREAM = stream(n_batches=8)


@pytest.mark.parametrize("cut", range(1, 8))
def test_exported_and_rebuilt_table_continues_with_same_choices(cut):
    batches = STREAM
    ref, ref_table = nat(ports=(50000, 50059), timeout=10, seed=7)
    ref_ports, ref_verdicts = [], []
    for b in batches:
        b = b.copy()
        ref_verdicts.append(run(ref, ref_table, b))
        ref_ports.append(b["src_port"].copy())
    assert ref.stats["expired"] and ref.stats["no_port"]      # reuse and exhaustion both exercised

    primary, table = nat(ports=(50000, 50059), timeout=10, seed=7)
    for b in batches[:cut]:
        run(primary, table, b.copy())
    records = table.export_rows(table.live_rows())
    secondary, sec_table = nat(ports=(50000, 50059), timeout=10, seed=7)
    sec_table.import_records(records)
    secondary.rebuild(sec_table)
    for k, b in enumerate(batches[cut:], start=cut):
        b = b.copy()
        assert (run(secondary, sec_table, b) == ref_verdicts[k]).all(), f"batch {k}"
        assert (b["src_port"] == ref_ports[k]).all(), f"batch {k}"


# ---------------------------------------------------------------- config

@pytest.mark.parametrize(("params", "key"), [
    ({}, "public_ip"),
    ({"public_ip": "1.2.3"}, "public_ip"),
    ({"public_ip": PUBLIC, "port_range": [5, 4]}, "port_range"),
    ({"public_ip": PUBLIC, "port_range": [0, 10]}, "port_range"),
    ({"public_ip": PUBLIC, "port_range": [10]}, "port_range"),
    ({"public_ip": PUBLIC, "idle_timeout_s": 0}, "idle_timeout_s"),
    ({"public_ip": PUBLIC, "idle_timeout_s": 1e30}, "idle_timeout_s"),
    ({"public_ip": PUBLIC, "idle_timeout_s": "1m"}, "idle_timeout_s"),
    ({"public_ip": PUBLIC, "port_rnage": [1, 2]}, "port_rnage"),
])
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        make_nf("nat", Params(params, source="nat.toml"), Context())


def test_more_instances_than_ports_is_an_error():
    with pytest.raises(ConfigError, match="port_range"):
        Nat(Params({"public_ip": PUBLIC, "port_range": [100, 101]}), Context(instance_index=0, instance_count=3))


def test_example_config_builds():
    cfg = tomllib.loads((EXAMPLES / "nat.toml").read_text())
    assert cfg["nf"]["kind"] == "nat"
    nf = make_nf("nat", Params(cfg["nf"]["params"]), Context(0, cfg["nf"]["instances"]))
    assert nf.n_ports == 25500


PROTOS = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_TCP]   # each client's flow


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=10), min_size=8, max_size=25),
       st.lists(st.sampled_from([0, 1000, S // 4, S // 2, 3 * S]), min_size=25, max_size=25))
def test_few_packets_path_decides_as_the_batch_path(batches, gaps):
    """Batches of up to FEW packets of established flows take a path in Python integers: the same
    verdicts, frames and table as the column path, through new flows, reverse packets, expiry and
    idle re-mapping (a 1 s timeout, gaps of 0 to 3 s between batches)."""
    from deft.nfs import checksum, nat as nat_module

    flows = Flows()
    built, t = [], S
    for k, pkts in enumerate(batches):
        t += gaps[k]
        spec = [(SERVER, 443, *client(c), PROTOS[c]) if back else (*client(c), SERVER, 443, PROTOS[c])
                for c, back in pkts]
        built.append(flows.batch(spec, ts=t + np.arange(len(spec))))
    outcomes = []
    for few in (nat_module.FEW, 0):
        saved = nat_module.FEW, checksum.FEW
        nat_module.FEW = checksum.FEW = few
        try:
            nf, table = nat(ports=(40000, 40004), timeout=1)   # 6 flows, 5 ports: some get none
            seen = []
            for b in built:
                b = b.copy()
                verdict = run(nf, table, b)
                seen.append((verdict.tolist(), b["frame"].tobytes(), b["src_ip"].tolist(), b["src_port"].tolist()))
            live = table.live_rows()
            seen.append((sorted(zip(table.flow_ids[live].tolist(), table.state[live].tolist())), dict(nf.stats)))
            outcomes.append(seen)
        finally:
            nat_module.FEW, checksum.FEW = saved
    assert outcomes[0] == outcomes[1]
