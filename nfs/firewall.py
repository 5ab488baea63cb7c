"""firewall: stateful TCP tracking plus a first-match rule list.

Synopsis
    TCP: a connection starts only with a SYN (no ACK) that the rules allow; its
    sender becomes the initiator. Each packet moves the connection through
    NONE -> SYN_SENT -> SYN_RECV -> ESTABLISHED -> FIN_WAIT_I/FIN_WAIT_R ->
    TIME_WAIT, or to CLOSED on a RST; packets that make no sense in the current
    state are dropped and counted by reason. UDP and ICMP: the rules judge a
    flow's first packet, and the verdict holds for the flow in both directions
    (so the answers to an allowed query pass).

Params ([nf.params])
    rules           list of tables, first match wins:
                      action    "allow" | "deny"                 (required)
                      proto     "tcp" | "udp" | "icmp" | "any"    (default "any")
                      src, dst  CIDR or address                  (default 0.0.0.0/0)
                      dst_port  port or [lo, hi]                 (TCP/UDP only;
                                                                  default any)
    default_action  "allow" | "deny" when no rule matches (default "allow")

State (per flow)
    tcp       TCP state (NONE=0 .. CLOSED=7, see TCP_STATES)
    init_dir  direction of the connection's initiator
    verdict   UDP/ICMP rule verdict of the flow: 0 undecided, 1 allow, 2 deny

Counters
    new_connections     TCP connections opened (SYN accepted)
    rule_deny           packets denied by the rules
    no_syn              TCP packets of a flow with no connection (data before the handshake)
    synack_from_initiator   SYN-ACK sent by the side that sent the SYN
    invalid_flags       SYN+FIN, no SYN/ACK/FIN/RST at all
    invalid_state       other packets that do not fit the state (e.g. a second SYN)
    after_rst           packets of a connection closed by RST

Example
    [nf]
    kind = "firewall"
    [nf.params]
    default_action = "deny"
    rules = [
      { action = "allow", proto = "udp", src = "10.0.0.0/8", dst_port = 53 },
      { action = "allow", proto = "tcp", dst_port = [80, 443] },
      { action = "allow", proto = "icmp" },
    ]

Notes. After a RST the only packet accepted is a new SYN from the initiator
(the same 5-tuple reused for a new connection, as conntrack allows); the same
holds in TIME_WAIT. Flows are never removed by this NF (there is no idle
timeout yet). Sequence numbers and windows are not checked.
"""

from __future__ import annotations

import ipaddress

import numpy as np

from deft.nfs.base import Context, NetworkFunction, Params
from deft.runtime.dataplane.packet import (
    DROP,
    FORWARD,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT_I", "FIN_WAIT_R", "TIME_WAIT", "CLOSED")
NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT_I, FIN_WAIT_R, TIME_WAIT, CLOSED = range(8)

# Packet classes from the TCP flags.
SYN, SYNACK, ACK, FIN, RST, BAD = range(6)
# Drop reasons (0 = pass); index into REASONS.
REASONS = ("", "no_syn", "synack_from_initiator", "invalid_flags", "invalid_state", "after_rst", "rule_deny")
_OK, _NO_SYN, _SYNACK_INIT, _BAD_FLAGS, _BAD_STATE, _AFTER_RST, _RULE_DENY = range(7)
_OPEN = 7   # pseudo reason in the table: "a SYN that opens a connection, if the rules allow"

_PROTOS = {"any": -1, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}
_RULE_KEYS = ("action", "proto", "src", "dst", "dst_port")


def _classes() -> np.ndarray:
    """Packet class for every value of the TCP flags byte."""
    out = np.empty(256, np.uint8)
    for f in range(256):
        if f & TCP_RST:
            out[f] = RST
        elif f & TCP_SYN:
            out[f] = BAD if f & TCP_FIN else (SYNACK if f & TCP_ACK else SYN)
        elif f & TCP_FIN:
            out[f] = FIN
        elif f & TCP_ACK:
            out[f] = ACK
        else:
            out[f] = BAD
    return out


def _transitions() -> tuple[np.ndarray, np.ndarray]:
    """next_state[state, side, class] and reason[state, side, class]; side 0 = initiator, 1 = responder.

    Anything not listed keeps the state and is dropped as invalid_state.
    """
    nxt = np.empty((8, 2, 6), np.uint8)
    why = np.full((8, 2, 6), _BAD_STATE, np.uint8)
    for s in range(8):
        nxt[s] = s
    I, R = 0, 1  # noqa: E741 - initiator / responder

    def ok(state, side, cls, to=None):
        nxt[state, side, cls] = state if to is None else to
        why[state, side, cls] = _OK

    why[:, :, BAD] = _BAD_FLAGS
    why[:, I, SYNACK] = _SYNACK_INIT
    for s in range(SYN_SENT, CLOSED):      # RST ends any live connection
        for side in (I, R):
            ok(s, side, RST, CLOSED)
    # NONE: nothing but a SYN, from either side (its sender becomes the initiator).
    why[NONE, :, :BAD] = _NO_SYN
    for side in (I, R):
        nxt[NONE, side, SYN] = SYN_SENT
        why[NONE, side, SYN] = _OPEN
    ok(SYN_SENT, I, SYN)                    # SYN retransmitted
    ok(SYN_SENT, R, SYNACK, SYN_RECV)
    ok(SYN_RECV, R, SYNACK)                 # SYN-ACK retransmitted
    ok(SYN_RECV, I, SYN)
    ok(SYN_RECV, I, ACK, ESTABLISHED)
    ok(SYN_RECV, I, FIN, FIN_WAIT_I)        # handshake ACK carrying a FIN
    for side in (I, R):
        ok(ESTABLISHED, side, ACK)
        ok(FIN_WAIT_I, side, ACK)
        ok(FIN_WAIT_R, side, ACK)
        ok(TIME_WAIT, side, ACK)
        ok(TIME_WAIT, side, FIN)            # FIN retransmitted
    ok(ESTABLISHED, R, SYNACK)              # the handshake's last ACK was lost
    ok(ESTABLISHED, I, FIN, FIN_WAIT_I)
    ok(ESTABLISHED, R, FIN, FIN_WAIT_R)
    ok(FIN_WAIT_I, I, FIN)
    ok(FIN_WAIT_I, R, FIN, TIME_WAIT)
    ok(FIN_WAIT_R, R, FIN)
    ok(FIN_WAIT_R, I, FIN, TIME_WAIT)
    # Closed connections: the initiator may reuse the 5-tuple with a new SYN.
    for s in (TIME_WAIT, CLOSED):
        nxt[s, I, SYN] = SYN_SENT
        why[s, I, SYN] = _OPEN
    why[CLOSED, :, :BAD] = np.where(why[CLOSED, :, :BAD] == _OPEN, _OPEN, _AFTER_RST)
    return nxt, why


_CLASS = _classes()
_NEXT, _WHY = _transitions()
_NEXT_L, _WHY_L = _NEXT.tolist(), _WHY.tolist()   # for the per-packet rare path
# Batch path: one gather per packet from a flat table, entry = reason << 3 | next state,
# index = (state * 2 + side) * 6 + class.
_PACKED = ((_WHY << 3) | _NEXT).reshape(-1)


class Firewall(NetworkFunction):
    name = "firewall"
    state_dtype = np.dtype([("tcp", "u1"), ("init_dir", "u1"), ("verdict", "u1")])
    counters = ("new_connections",) + REASONS[1:]

    def __init__(self, params: Params, ctx: Context):
        super().__init__(params, ctx)
        self.rules = [_parse_rule(params, i, r) for i, r in enumerate(params.list("rules", []))]
        default = params.str("default_action", "allow")
        if default not in ("allow", "deny"):
            raise params.error("default_action", f'expected "allow" or "deny", got {default!r}')
        self.default_allow = default == "allow"

    # ------------------------------------------------------------------ rules

    def allowed(self, batch: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Rule verdict (True = allow) for packets ``idx``: first match wins, vectorised per rule."""
        proto = batch["proto"][idx]
        src = batch["src_ip"][idx]
        dst = batch["dst_ip"][idx]
        dport = batch["dst_port"][idx]
        has_ports = proto != IPPROTO_ICMP
        verdict = np.full(len(idx), self.default_allow)
        open_ = np.ones(len(idx), bool)      # not matched by an earlier rule
        for allow, p, snet, smask, dnet, dmask, plo, phi in self.rules:
            hit = open_ & ((src & smask) == snet) & ((dst & dmask) == dnet)
            if p >= 0:
                hit &= proto == p
            if plo is not None:
                hit &= has_ports & (dport >= plo) & (dport <= phi)
            verdict[hit] = allow
            open_ &= ~hit
        return verdict

    # ------------------------------------------------------------------ batch path

    def process(self, batch, rows, new_rows, table, ctx):
        n = len(batch)
        st = table.state
        reason = np.zeros(n, np.uint8)
        tcp = batch["proto"] == IPPROTO_TCP
        all_tcp = bool(tcp.all())
        if not all_tcp:
            self._datagrams(batch, rows, np.flatnonzero(~tcp), st, reason)
        t = np.flatnonzero(tcp) if not all_tcp else None
        r = rows if all_tcp else rows[t]
        if len(r):
            state = st["tcp"][r]
            side = (batch["direction"] if all_tcp else batch["direction"][t]) != st["init_dir"][r]
            cls = _CLASS[batch["tcp_flags"] if all_tcp else batch["tcp_flags"][t]]
            code = _PACKED[state.astype(np.intp) * 12 + side * 6 + cls]
            nxt, why = code & 7, code >> 3
            # If no packet changes its flow's state, judging every packet against the
            # state before the batch is exact. Otherwise the flows that do change
            # are replayed packet by packet, in order (handshakes, teardowns: rare).
            moving = (nxt != state) | (why == _OPEN)
            if moving.any():
                pkts = np.flatnonzero(np.isin(r, r[moving]))
                why[pkts] = self._replay(batch, r[pkts], pkts if all_tcp else t[pkts], st)
            reason[slice(None) if all_tcp else t] = why
        verdict = np.where(reason == _OK, FORWARD, DROP).astype(np.uint8)
        if verdict.any():
            counts = np.bincount(reason, minlength=len(REASONS))
            for k in range(1, len(REASONS)):
                if counts[k]:
                    self.stats[REASONS[k]] += int(counts[k])
        batch["verdict"] = verdict
        return verdict

    def _datagrams(self, batch, rows, idx, st, reason) -> None:
        """UDP/ICMP: the first packet of a flow is judged by the rules; the flow keeps the verdict."""
        r = rows[idx]
        v = st["verdict"][r]
        undecided = v == 0
        if undecided.any():
            u = idx[undecided]
            first_rows, first = np.unique(rows[u], return_index=True)
            allow = self.allowed(batch, u[first])
            st["verdict"][first_rows] = np.where(allow, 1, 2)
            st["init_dir"][first_rows] = batch["direction"][u[first]]
            v = st["verdict"][r]
        reason[idx[v == 2]] = _RULE_DENY

    def _replay(self, batch, rows, pkts, st) -> np.ndarray:
        """Apply the transition table packet by packet for the given packets (batch order)."""
        syn = _CLASS[batch["tcp_flags"][pkts]] == SYN
        allow = np.zeros(len(pkts), bool)
        if syn.any():
            allow[syn] = self.allowed(batch, pkts[syn])
        state: dict[int, list[int]] = {}
        out = []
        for row, d, f, a in zip(rows.tolist(), batch["direction"][pkts].tolist(),
                                batch["tcp_flags"][pkts].tolist(), allow.tolist()):
            s = state.get(row)
            if s is None:
                s = state[row] = [int(st["tcp"][row]), int(st["init_dir"][row])]
            side = int(d != s[1])
            cls = int(_CLASS[f])
            why = _WHY_L[s[0]][side][cls]
            if why == _OPEN:
                if not a:
                    why = _RULE_DENY
                else:
                    why = _OK
                    if s[0] == NONE:
                        s[1] = d             # the SYN's sender is the initiator
                    s[0] = SYN_SENT
                    self.stats["new_connections"] += 1
            elif why == _OK:
                s[0] = _NEXT_L[s[0]][side][cls]
            out.append(why)
        for row, (s, d) in state.items():
            st["tcp"][row] = s
            st["init_dir"][row] = d
        return np.array(out, np.uint8)


def _parse_rule(params: Params, i: int, rule) -> tuple:
    """One rule as (allow, proto, src_net, src_mask, dst_net, dst_mask, port_lo, port_hi)."""
    key = f"rules[{i}]"
    if not isinstance(rule, dict):
        raise params.error(key, f"expected a table like {{action = \"allow\", proto = \"udp\"}}, got {rule!r}")
    for k in rule:
        if k not in _RULE_KEYS:
            raise params.error(f"{key}.{k}", f"unknown rule key (known: {', '.join(_RULE_KEYS)})")
    action = rule.get("action")
    if action not in ("allow", "deny"):
        raise params.error(f"{key}.action", f'expected "allow" or "deny", got {action!r}')
    proto = rule.get("proto", "any")
    if proto not in _PROTOS:
        raise params.error(f"{key}.proto", f"expected one of {', '.join(_PROTOS)}, got {proto!r}")
    src = _cidr(params, f"{key}.src", rule.get("src", "0.0.0.0/0"))
    dst = _cidr(params, f"{key}.dst", rule.get("dst", "0.0.0.0/0"))
    lo = hi = None
    if "dst_port" in rule:
        if proto in ("icmp",):
            raise params.error(f"{key}.dst_port", "ICMP has no ports")
        lo, hi = _port_span(params, f"{key}.dst_port", rule["dst_port"])
    return (action == "allow", _PROTOS[proto], *src, *dst, lo, hi)


def _cidr(params: Params, key: str, text) -> tuple[np.uint32, np.uint32]:
    if not isinstance(text, str):
        raise params.error(key, f'expected a CIDR string like "10.0.0.0/8", got {text!r}')
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise params.error(key, f"expected an IPv4 CIDR like \"10.0.0.0/8\", got {text!r} ({e})") from None
    return np.uint32(int(net.network_address)), np.uint32(int(net.netmask))


def _port_span(params: Params, key: str, value) -> tuple[int, int]:
    def port(v):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
            raise params.error(key, f"expected a port 0..65535 or [lo, hi], got {value!r}")
        return v

    if isinstance(value, list):
        if len(value) != 2:
            raise params.error(key, f"expected [lo, hi], got {value!r}")
        lo, hi = port(value[0]), port(value[1])
        if lo > hi:
            raise params.error(key, f"lo > hi in {value!r}")
        return lo, hi
    p = port(value)
    return p, p
