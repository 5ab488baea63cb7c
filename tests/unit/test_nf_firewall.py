"""firewall: TCP state tracking, drop reasons, rules for UDP/ICMP/new TCP, config errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.nfs.base import Context, Params, ipv4_to_int
from deft.nfs.firewall import CLOSED, ESTABLISHED, NONE, SYN_SENT, TIME_WAIT, Firewall
from deft.nfs.registry import make_nf
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import DROP, FORWARD, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
C = ipv4_to_int("10.0.0.5")          # client
SRV = ipv4_to_int("93.184.216.34")   # server
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08

# (sender, flags): "c" = client (initiator), "s" = server
HANDSHAKE = [("c", SYN), ("s", SYN | ACK), ("c", ACK)]
DATA = [("c", PSH | ACK), ("s", PSH | ACK), ("c", ACK)]
TEARDOWN = [("c", FIN | ACK), ("s", ACK), ("s", FIN | ACK), ("c", ACK)]


def fw(**params):
    nf = Firewall(Params(params), Context())
    return nf, nf.new_table(16)


def tcp(seq, client=C, cport=40000, server=SRV, sport=443, flow_id=1):
    """Records for a list of (sender, flags) on one connection."""
    frames = []
    for who, flags in seq:
        s, sp, d, dp = (client, cport, server, sport) if who == "c" else (server, sport, client, cport)
        frames.append(vxlan_wrap(build_frame(s, d, IPPROTO_TCP, sp, dp, b"x", tcp_flags=flags), 1))
    recs, drops = records_from_datagrams(frames)
    assert not drops.any()
    recs["flow_id"] = flow_id
    return recs


def dgram(pkts, flow_ids):
    """pkts: (src, sport, dst, dport, proto)."""
    recs, _ = records_from_datagrams([vxlan_wrap(build_frame(s, d, p, sp, dp, b"q"), 1) for s, sp, d, dp, p in pkts])
    recs["flow_id"] = flow_ids
    return recs


def run(nf, table, b):
    rows, new_rows = table.rows_for(b["flow_id"])
    return nf.process(b, rows, new_rows, table, nf.ctx)


def state(table, flow_id=1):
    return int(table.state["tcp"][table.row_of(flow_id)])


# ---------------------------------------------------------------- TCP

@pytest.mark.parametrize("split", [False, True])
def test_valid_connection_passes_in_one_batch_or_packet_by_packet(split):
    nf, table = fw()
    seq = HANDSHAKE + DATA + TEARDOWN
    if split:
        verdicts = np.concatenate([run(nf, table, tcp([p])) for p in seq])
    else:
        verdicts = run(nf, table, tcp(seq))
    assert (verdicts == FORWARD).all()
    assert state(table) == TIME_WAIT
    assert nf.stats["new_connections"] == 1
    assert sum(nf.stats[k] for k in nf.stats if k != "new_connections") == 0


def test_established_after_handshake():
    nf, table = fw()
    run(nf, table, tcp(HANDSHAKE))
    assert state(table) == ESTABLISHED
    assert (run(nf, table, tcp(DATA * 3)) == FORWARD).all()


def test_data_before_handshake_dropped():
    nf, table = fw()
    v = run(nf, table, tcp([("c", PSH | ACK), ("s", ACK)]))
    assert (v == DROP).all() and nf.stats["no_syn"] == 2
    assert state(table) == NONE
    # SYN then data before the SYN-ACK: the data does not fit SYN_SENT.
    v = run(nf, table, tcp([("c", SYN), ("c", PSH | ACK)]))
    assert v.tolist() == [FORWARD, DROP] and nf.stats["invalid_state"] == 1


def test_synack_from_initiator_dropped():
    nf, table = fw()
    v = run(nf, table, tcp([("c", SYN), ("c", SYN | ACK), ("s", SYN | ACK), ("c", ACK)]))
    assert v.tolist() == [FORWARD, DROP, FORWARD, FORWARD]
    assert nf.stats["synack_from_initiator"] == 1
    assert state(table) == ESTABLISHED


def test_anything_after_rst_dropped_but_new_syn_reopens():
    nf, table = fw()
    run(nf, table, tcp(HANDSHAKE))
    v = run(nf, table, tcp([("s", RST), ("c", PSH | ACK), ("s", ACK), ("c", FIN | ACK), ("s", RST)]))
    assert v.tolist() == [FORWARD, DROP, DROP, DROP, DROP]
    assert nf.stats["after_rst"] == 4 and state(table) == CLOSED
    # The server cannot reopen; the client can reuse the 5-tuple.
    assert run(nf, table, tcp([("s", SYN)])).tolist() == [DROP]
    assert (run(nf, table, tcp(HANDSHAKE)) == FORWARD).all()
    assert state(table) == ESTABLISHED and nf.stats["new_connections"] == 2


def test_bad_flag_combinations_dropped():
    nf, table = fw()
    v = run(nf, table, tcp([("c", SYN | FIN), ("c", 0), ("c", SYN)]))
    assert v.tolist() == [DROP, DROP, FORWARD] and nf.stats["invalid_flags"] == 2


def test_server_side_syn_makes_server_the_initiator():
    nf, table = fw()
    v = run(nf, table, tcp([("s", SYN), ("c", SYN | ACK), ("s", ACK), ("c", PSH | ACK)]))
    assert (v == FORWARD).all() and state(table) == ESTABLISHED


def test_connections_tracked_independently_in_one_batch():
    nf, table = fw()
    a = tcp(HANDSHAKE + DATA, flow_id=1)
    b = tcp([("c", PSH | ACK)], cport=40001, flow_id=2)          # no handshake
    c = tcp(HANDSHAKE, cport=40002, flow_id=3)
    mixed = np.concatenate([a[:2], b, c[:1], a[2:], c[1:]])
    v = run(nf, table, mixed)
    assert v.tolist() == [FORWARD, FORWARD, DROP, FORWARD] + [FORWARD] * 4 + [FORWARD, FORWARD]
    assert [state(table, f) for f in (1, 2, 3)] == [ESTABLISHED, NONE, ESTABLISHED]


PACKETS = st.tuples(st.sampled_from("cs"),
                    st.sampled_from([SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK, SYN | FIN, 0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), PACKETS), max_size=40), st.lists(st.integers(1, 12), max_size=8))
def test_batching_does_not_change_verdicts_or_states(pkts, cuts):
    """The vectorised path with replay must equal processing one packet at a time."""
    def records(items):
        parts = [tcp([p], cport=40000 + f, flow_id=f) for f, p in items]
        return np.concatenate(parts) if parts else tcp([])

    one, t1 = fw()
    ref = [int(run(one, t1, records([item]))[0]) for item in pkts]
    many, t2 = fw()
    got, start = [], 0
    for cut in cuts + [len(pkts)]:
        part = pkts[start:start + cut]
        start += cut
        if part:
            got += run(many, t2, records(part)).tolist()
    assert got == ref
    assert one.stats == many.stats
    for f in range(1, 4):
        assert (f in t1) == (f in t2)
        if f in t1:
            assert t1.state[t1.row_of(f)] == t2.state[t2.row_of(f)]


# ---------------------------------------------------------------- rules

RULES = [
    {"action": "deny", "src": "10.9.0.0/16"},
    {"action": "allow", "proto": "udp", "src": "10.0.0.0/8", "dst_port": 53},
    {"action": "allow", "proto": "icmp", "dst": "93.184.216.0/24"},
    {"action": "allow", "proto": "tcp", "dst_port": [80, 443]},
]


def test_rules_judge_udp_and_icmp_flows_first_match_wins():
    nf, table = fw(rules=RULES, default_action="deny")
    pkts = [
        (C, 5353, SRV, 53, IPPROTO_UDP),                       # allow: rule 1
        (ipv4_to_int("10.9.1.1"), 5353, SRV, 53, IPPROTO_UDP),  # deny: rule 0 before rule 1
        (C, 5353, SRV, 54, IPPROTO_UDP),                       # no rule: default deny
        (C, 0, SRV, 0, IPPROTO_ICMP),                          # allow: rule 2
        (C, 0, ipv4_to_int("8.8.8.8"), 0, IPPROTO_ICMP),       # default deny
        (SRV, 53, C, 5353, IPPROTO_UDP),                       # reply of flow 1: allowed
    ]
    v = run(nf, table, dgram(pkts, [1, 2, 3, 4, 5, 1]))
    assert v.tolist() == [FORWARD, DROP, DROP, FORWARD, DROP, FORWARD]
    assert nf.stats["rule_deny"] == 3
    # Verdicts stick to the flows, both directions.
    back = dgram([(SRV, 54, C, 5353, IPPROTO_UDP), (SRV, 0, C, 0, IPPROTO_ICMP)], [3, 4])
    assert run(nf, table, back).tolist() == [DROP, FORWARD]


def test_rules_gate_new_tcp_connections():
    nf, table = fw(rules=RULES, default_action="deny")
    assert (run(nf, table, tcp(HANDSHAKE, sport=443)) == FORWARD).all()
    v = run(nf, table, tcp(HANDSHAKE, sport=22, flow_id=2))
    assert v.tolist() == [DROP, DROP, DROP]
    assert nf.stats["rule_deny"] == 1 and nf.stats["no_syn"] == 2 and state(table, 2) == NONE


def test_default_allow_without_rules():
    nf, table = fw()
    v = run(nf, table, dgram([(C, 1, SRV, 2, IPPROTO_UDP), (C, 0, SRV, 0, IPPROTO_ICMP)], [1, 2]))
    assert (v == FORWARD).all()


def test_syn_denied_then_state_stays_none():
    nf, table = fw(rules=[{"action": "deny", "proto": "tcp"}])
    assert run(nf, table, tcp([("c", SYN)])).tolist() == [DROP]
    assert state(table) == SYN_SENT - 1 == NONE


# ---------------------------------------------------------------- config

@pytest.mark.parametrize(("params", "key"), [
    ({"rules": [{"action": "allow"}, {"action": "allow"}, {"action": "permit"}]}, r"rules\[2\]\.action"),
    ({"rules": [{"proto": "udp"}]}, r"rules\[0\]\.action"),
    ({"rules": [{"action": "allow", "proto": "sctp"}]}, r"rules\[0\]\.proto"),
    ({"rules": [{"action": "allow", "src": "10.0.0.0/33"}]}, r"rules\[0\]\.src"),
    ({"rules": [{"action": "allow", "dst": "10.0.0.1/8"}]}, r"rules\[0\]\.dst"),
    ({"rules": [{"action": "allow", "dst_port": [90, 80]}]}, r"rules\[0\]\.dst_port"),
    ({"rules": [{"action": "allow", "dst_port": 70000}]}, r"rules\[0\]\.dst_port"),
    ({"rules": [{"action": "allow", "proto": "icmp", "dst_port": 7}]}, r"rules\[0\]\.dst_port"),
    ({"rules": [{"action": "allow", "dport": 7}]}, r"rules\[0\]\.dport"),
    ({"rules": ["allow all"]}, r"rules\[0\]"),
    ({"rules": {"action": "allow"}}, "rules"),
    ({"default_action": "drop"}, "default_action"),
    ({"default": "deny"}, "default"),
])
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key):
        make_nf("firewall", Params(params, source="fw.toml"), Context())


def test_example_config_builds():
    cfg = tomllib.loads((EXAMPLES / "firewall.toml").read_text())
    nf = make_nf(cfg["nf"]["kind"], Params(cfg["nf"]["params"]), Context())
    assert len(nf.rules) == 5 and not nf.default_allow


def test_mixed_tcp_and_datagrams_in_one_batch():
    nf, table = fw(rules=RULES, default_action="deny")
    conn = tcp(HANDSHAKE + DATA, sport=80)
    udp = dgram([(C, 5353, SRV, 53, IPPROTO_UDP), (C, 5353, SRV, 9, IPPROTO_UDP)], [7, 8])
    stray = tcp([("c", ACK)], cport=41000, flow_id=9)
    b = np.concatenate([conn[:2], udp[:1], stray, conn[2:], udp[1:]])
    v = run(nf, table, b)
    assert v.tolist() == [FORWARD, FORWARD, FORWARD, DROP] + [FORWARD] * 4 + [DROP]
    assert nf.stats["no_syn"] == 1 and nf.stats["rule_deny"] == 1
    assert state(table) == ESTABLISHED
