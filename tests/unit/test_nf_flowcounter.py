"""flowcounter: per-flow packet and byte counts, both directions, several packets per batch."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from deft.nfs.base import Context, Params, ipv4_to_int
from deft.nfs.flowcounter import FlowCounter
from deft.nfs.registry import make_nf
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import FORWARD, IPPROTO_UDP, empty_batch
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
A, B = ipv4_to_int("10.0.0.1"), ipv4_to_int("10.0.0.2")


def batch(pkts):
    """pkts: (flow_id, src, dst, payload_len); flows are UDP between A:1000 and B:2000+flow."""
    frames = [vxlan_wrap(build_frame(s, d, IPPROTO_UDP, 1000 if s == A else 2000 + f,
                                     2000 + f if s == A else 1000, b"z" * n), 1) for f, s, d, n in pkts]
    recs, _ = records_from_datagrams(frames)
    recs["flow_id"] = [f for f, *_ in pkts]
    return recs


def run(nf, table, b):
    rows, new_rows = table.rows_for(b["flow_id"])
    return nf.process(b, rows, new_rows, table, nf.ctx)


def test_counts_packets_and_bytes_per_flow():
    nf = FlowCounter(Params({}), Context())
    table = nf.new_table(4)
    b = batch([(1, A, B, 10), (2, A, B, 0), (1, B, A, 20), (1, A, B, 30), (3, B, A, 5)])
    before = b.copy()
    v = run(nf, table, b)
    assert v.dtype == np.uint8 and (v == FORWARD).all()
    assert (b == before).all()                                  # nothing rewritten
    b2 = batch([(1, A, B, 1)] * 3 + [(2, B, A, 2)])
    run(nf, table, b2)
    frame = 14 + 20 + 8                                         # Ethernet + IPv4 + UDP headers
    counts = {f: tuple(int(x) for x in table.state[table.row_of(f)]) for f in (1, 2, 3)}
    assert counts == {
        1: (6, 6 * frame + 10 + 20 + 30 + 3),
        2: (2, 2 * frame + 0 + 2),
        3: (1, frame + 5),
    }
    assert nf.stats == {"packets": 9, "new_flows": 3}


def test_many_flows_grow_the_table():
    nf = FlowCounter(Params({}), Context())
    table = nf.new_table(2)
    ids = np.arange(1, 301) % 150 + 1
    b = batch([(int(f), A, B, 0) for f in ids])
    run(nf, table, b)
    assert len(table) == 150
    assert (table.state["packets"][table.live_rows()] == 2).all()


def test_takes_no_params():
    with pytest.raises(ConfigError, match="foo"):
        make_nf("flowcounter", Params({"foo": 1}, source="fc.toml"), Context())


def test_example_config_builds():
    cfg = tomllib.loads((EXAMPLES / "flowcounter.toml").read_text())
    assert isinstance(make_nf(cfg["nf"]["kind"], Params(cfg["nf"]["params"]), Context()), FlowCounter)


@pytest.mark.parametrize(("kind", "params"), [
    ("flowcounter", {}),
    ("nat", {"public_ip": "203.0.113.1"}),
    ("loadbalancer", {"backends": ["10.1.0.1"], "table_size": 7}),
    ("firewall", {"rules": [{"action": "deny", "proto": "udp"}]}),
    ("portscan", {"threshold": 5}),
])
def test_every_nf_takes_an_empty_batch(kind, params):
    nf = make_nf(kind, Params(params), Context())
    table = nf.new_table(4)
    empty = np.zeros(0, np.int64)
    verdict = nf.process(empty_batch(0), empty, empty, table, nf.ctx)
    assert verdict.dtype == np.uint8 and len(verdict) == 0 and len(table) == 0
