"""loadbalancer: rewriting, stickiness across backend changes, Maglev balance and disruption."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from deft.nfs.base import Context, Params, int_to_ipv4, ipv4_to_int
from deft.nfs.loadbalancer import LoadBalancer, maglev_table
from deft.nfs.registry import make_nf
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import (
    FORWARD,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import ConfigError

from .reference_checksums import assert_checksums

VIP = ipv4_to_int("198.51.100.10")
BACKENDS = ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3", "10.1.0.4:9000"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"






def batch(pkts, first_id=1):
    """pkts: (src_ip, sport, dst_ip, dport, proto); flow id per 5-tuple, both directions alike."""
    recs, drops = records_from_datagrams(
        [vxlan_wrap(build_frame(s, d, p, sp, dp, b"GET /"), 9) for s, sp, d, dp, p in pkts], ts_ns=1)
    assert not drops.any()
    ids: dict = {}
    for i, (s, sp, d, dp, p) in enumerate(pkts):
        recs["flow_id"][i] = ids.setdefault((p, *sorted([(s, sp), (d, dp)])), first_id + len(ids))
    return recs


def run(nf, table, b):
    rows, new_rows = table.rows_for(b["flow_id"])
    return nf.process(b, rows, new_rows, table, nf.ctx)


def lb(backends=BACKENDS, table_size=65537):
    nf = LoadBalancer(Params({"backends": list(backends), "table_size": table_size}), Context())
    return nf, nf.new_table(64)


def clients(n, start=0):
    return [(ipv4_to_int("172.16.0.1") + (start + i) // 1000, 2000 + (start + i) % 1000, VIP, 80, IPPROTO_TCP)
            for i in range(n)]


def backend_of(rec) -> str:
    ip, port = int_to_ipv4(int(rec["dst_ip"])), int(rec["dst_port"])
    return f"{ip}:{port}"


def test_initiator_packets_go_to_backend_with_valid_checksums():
    nf, table = lb()
    b = batch(clients(200) + [(ipv4_to_int("172.16.9.9"), 0, VIP, 0, IPPROTO_ICMP)]
              + [(ipv4_to_int("172.16.9.8"), 53, VIP, 53, IPPROTO_UDP)])
    assert (run(nf, table, b) == FORWARD).all()
    allowed = {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:80", "10.1.0.4:9000"}
    for rec in b[:200]:
        frame = bytes(rec["frame"][: rec["frame_len"]])
        assert_checksums(frame)
        assert backend_of(rec) in allowed
        assert struct.unpack("!IH", frame[30:34] + frame[36:38]) == (rec["dst_ip"], rec["dst_port"])
    for rec in b[200:]:
        assert_checksums(bytes(rec["frame"][: rec["frame_len"]]))
        assert int_to_ipv4(int(rec["dst_ip"])).startswith("10.1.0.")
    assert nf.stats["new_flows"] == 202


def test_reverse_packets_untouched():
    nf, table = lb()
    out = clients(20)
    run(nf, table, batch(out))
    back = batch([(d, dp, s, sp, p) for s, sp, d, dp, p in out])
    before = back.copy()
    run(nf, table, back)
    assert (back["frame"] == before["frame"]).all() and (back["dst_ip"] == before["dst_ip"]).all()


def test_first_packet_decides_initiator_even_with_reply_in_same_batch():
    nf, table = lb()
    s, sp, d, dp, p = clients(1)[0]
    b = batch([(s, sp, d, dp, p), (d, dp, s, sp, p), (s, sp, d, dp, p)])
    run(nf, table, b)
    assert b["dst_ip"][0] == b["dst_ip"][2] != VIP
    assert b["src_ip"][1] == VIP and b["dst_ip"][1] == s


def test_existing_flows_keep_backend_across_set_backends():
    nf, table = lb()
    out = clients(400)
    first = batch(out)
    run(nf, table, first)
    chosen = [backend_of(r) for r in first]
    nf.set_backends(["10.1.0.9:8080"])                 # every old backend gone
    again = batch(out)
    run(nf, table, again)
    assert [backend_of(r) for r in again] == chosen
    fresh = batch(clients(50, start=1000), first_id=10_000)
    run(nf, table, fresh)
    assert {backend_of(r) for r in fresh} == {"10.1.0.9:8080"}


def test_maglev_table_is_balanced():
    names = [f"10.2.0.{i}" for i in range(1, 11)]
    counts = np.bincount(maglev_table(names, 65537), minlength=10)
    assert counts.max() - counts.min() <= 1
    nf, table = lb([f"{n}:80" for n in names])
    b = batch(clients(5000))
    run(nf, table, b)
    _, per_backend = np.unique(b["dst_ip"], return_counts=True)
    assert len(per_backend) == 10
    assert per_backend.min() > 0.8 * 500 and per_backend.max() < 1.2 * 500


def test_removing_a_backend_moves_few_other_assignments():
    names = [f"10.2.0.{i}:80" for i in range(1, 11)]
    flows = clients(20000)
    before_nf, t1 = lb(names)
    b1 = batch(flows)
    run(before_nf, t1, b1)
    after_nf, t2 = lb(names)
    after_nf.set_backends([n for n in names if n != "10.2.0.4:80"])
    b2 = batch(flows)
    run(after_nf, t2, b2)
    gone = b1["dst_ip"] == ipv4_to_int("10.2.0.4")
    assert 0.05 < gone.mean() < 0.15
    assert (b2["dst_ip"][gone] != ipv4_to_int("10.2.0.4")).all()
    moved = (b1["dst_ip"] != b2["dst_ip"]) & ~gone
    assert moved.mean() < 0.02                        # Maglev: only a few percent move


def test_maglev_table_is_deterministic():
    names = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    assert (maglev_table(names, 251) == maglev_table(list(names), 251)).all()


@pytest.mark.parametrize(("params", "key"), [
    ({}, "backends"),
    ({"backends": []}, "backends"),
    ({"backends": ["10.0.0.1", "10.0.0.x"]}, r"backends\[1\]"),
    ({"backends": ["10.0.0.1:0"]}, r"backends\[0\]"),
    ({"backends": ["10.0.0.1:http"]}, r"backends\[0\]"),
    ({"backends": [42]}, r"backends\[0\]"),
    ({"backends": ["10.0.0.1", "10.0.0.1"]}, "backends"),
    ({"backends": ["10.0.0.1"], "table_size": 65536}, "table_size"),
    ({"backends": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "table_size": 3}, "backends"),
])
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key):
        make_nf("loadbalancer", Params(params, source="lb.toml"), Context())


def test_example_config_builds():
    cfg = tomllib.loads((EXAMPLES / "loadbalancer.toml").read_text())
    nf = make_nf(cfg["nf"]["kind"], Params(cfg["nf"]["params"]), Context())
    assert isinstance(nf, LoadBalancer) and len(nf.backends) == 4
