"""The report: loss, order, rates, latency and timeline of a run, NF drop counters, the text form.

``analyze`` is a pure function of what was sent and what was received;
``drop_counters`` / ``drop_difference`` pick a deft-node's loss counters out of
two ``deft-ctl status`` replies; ``format_report`` renders the report dict.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from deft.tools.trafficgen.common import PROG
from deft.tools.trafficgen.receiver import Received
from deft.tools.trafficgen.sender import SendLog

BIN_NS = 100_000_000       # timeline bin
STATUS_REQUEST = {"cmd": "status"}
HUMAN_TIMELINE_MAX_BINS = 60


# ---------------------------------------------------------------------------------------------
# Analysis: a pure function of what was sent and what was received


def analyze(plan_flow: np.ndarray, plan_flow_seq: np.ndarray, sent: SendLog, received: Received,
            datagram_len: np.ndarray | None = None, bin_ns: int = BIN_NS) -> dict[str, Any]:
    """The loss/order/latency part of the report.

    A received record counts when its id was sent tagged by this run and its
    trailer time equals the recorded send time; anything else (a stale packet
    of an earlier run, a corrupted trailer) counts as foreign. The first
    arrival of an id counts as received, later ones as duplicates. Reordered:
    among first arrivals, per flow, a packet whose per-flow sequence is lower
    than one already received of that flow.
    """
    send_ns = sent.send_ns
    tagged = (plan_flow >= 0) & (send_ns > 0)
    n_sent = int(tagged.sum())
    valid, ids = _valid_records(received, send_ns, tagged)
    first = np.sort(np.unique(ids, return_index=True)[1]) if len(ids) else np.zeros(0, dtype=np.int64)
    first_ids = ids[first]
    recv_ns = received.recv_ns[valid].astype(np.int64)[first]
    latency_ns = recv_ns - send_ns[first_ids]
    reordered, reordered_flows = _count_reordered(plan_flow[first_ids], plan_flow_seq[first_ids])
    lost_mask = tagged.copy()
    lost_mask[first_ids] = False
    report: dict[str, Any] = {
        "sent": n_sent,
        "untagged_sent": int(((plan_flow < 0) & (send_ns > 0)).sum()),
        "send_errors": sent.send_errors,
        "icmp_refused": sent.icmp_refused,
        "received": len(first_ids),
        "lost": n_sent - len(first_ids),
        "loss_ratio": (n_sent - len(first_ids)) / n_sent if n_sent else 0.0,
        "flows_with_loss": len(np.unique(plan_flow[lost_mask])),
        # a few of the lost packets, to look for a pattern (a flow's first packets? one instant?)
        "lost_sample": [{"id": int(i), "flow": int(plan_flow[i]), "flow_seq": int(plan_flow_seq[i]),
                         "sent_ms": round((int(send_ns[i]) - sent.start_ns) / 1e6, 3)}
                        for i in np.flatnonzero(lost_mask)[:20]],
        # runs of consecutive lost packets in send order: an io killed mid-burst loses one run
        "lost_runs": _runs(np.flatnonzero(lost_mask[tagged])),
        "duplicated": len(ids) - len(first_ids),
        # a few of the packets that came twice: when they were sent and when each copy came back
        "duplicated_sample": _dup_sample(ids, first, plan_flow, plan_flow_seq, send_ns, sent.start_ns,
                                         received.recv_ns[valid].astype(np.int64)),
        "reordered": reordered,
        "reordered_flows": reordered_flows,
        "foreign": received.foreign + int((~valid).sum()),
        "receiver_overflow": received.overflow,
    }
    report["remapped_flows"] = _count_remapped(plan_flow[first_ids], received, valid, first)
    report.update(_rates(send_ns[tagged], recv_ns, sent, datagram_len, first_ids))
    report["latency_us"] = _latency_summary(latency_ns)
    report["timeline"] = _timeline(send_ns[tagged], recv_ns, latency_ns, sent.start_ns, bin_ns)
    return report


def _valid_records(received: Received, send_ns: np.ndarray, tagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of records that match a packet of this run, and their ids (int64, arrival order)."""
    raw = received.ids
    in_range = raw < np.uint64(len(send_ns))
    ids = np.where(in_range, raw, 0).astype(np.int64)
    valid = in_range & tagged[ids] & (send_ns[ids] == received.sent_ns.astype(np.int64))
    return valid, ids[valid]


def _count_remapped(flow: np.ndarray, received: Received, valid: np.ndarray, first: np.ndarray) -> int | None:
    """Flows whose packets toward one destination arrived from more than one source endpoint.

    A NAT gives a flow one public endpoint for its life; a failover that lost
    the flow's state would give it a new one (G5). Grouping by destination
    separates a flow's two directions (the NAT rewrites only the source).
    """
    if received.src is None:
        return None
    src = received.src[valid][first]
    dst = received.dst[valid][first]
    keep = src != 0
    if not keep.any():
        return 0
    groups = np.unique(np.stack([flow[keep].astype(np.uint64), dst[keep], src[keep]]), axis=1)
    flow_dst, counts = np.unique(groups[:2], axis=1, return_counts=True)
    return len(np.unique(flow_dst[0][counts > 1]))


def _dup_sample(ids, first, plan_flow, plan_flow_seq, send_ns, start_ns, recv_ns) -> list[dict]:
    again = np.ones(len(ids), dtype=bool)
    again[first] = False
    out = []
    for k in np.flatnonzero(again)[:20].tolist():
        i = int(ids[k])
        came = np.flatnonzero(ids == i)
        out.append({"id": i, "flow": int(plan_flow[i]), "flow_seq": int(plan_flow_seq[i]),
                    "sent_ms": round((int(send_ns[i]) - start_ns) / 1e6, 3),
                    "received_ms": [round((int(recv_ns[c]) - start_ns) / 1e6, 3) for c in came.tolist()]})
    return out


def _count_reordered(flow: np.ndarray, seq: np.ndarray) -> tuple[int, int]:
    """(packets that arrived after a higher seq of their flow, flows with at least one), arrival order.

    Sorting stably by flow keeps arrival order within a flow; with key =
    flow * (max seq + 1) + seq a running maximum over the whole array never
    carries from one flow into the next (a later flow's keys are all larger).
    """
    if len(flow) == 0:
        return 0, 0
    order = np.argsort(flow, kind="stable")
    f = flow[order]
    key = f * (int(seq.max()) + 1) + seq[order]
    before = np.maximum.accumulate(key)
    late = np.zeros(len(key), dtype=bool)
    late[1:] = key[1:] < before[:-1]
    return int(late.sum()), len(np.unique(f[late]))


def _rates(send_ns: np.ndarray, recv_ns: np.ndarray, sent: SendLog, datagram_len: np.ndarray | None,
           first_ids: np.ndarray) -> dict[str, Any]:
    """Achieved send rate over the send window (first to last send); receive rate over first send
    to last arrival, so a late start of the receive stream cannot inflate it on short runs."""
    send_span = (int(send_ns.max()) - int(send_ns.min())) / 1e9 if len(send_ns) > 1 else 0.0
    recv_span = (int(recv_ns.max()) - int(send_ns.min())) / 1e9 if len(recv_ns) and len(send_ns) else 0.0
    out: dict[str, Any] = {
        "send_seconds": round((sent.end_ns - sent.start_ns) / 1e9, 6),
        "send_rate_pps": round((len(send_ns) - 1) / send_span, 1) if send_span else None,
        "receive_rate_pps": round(len(recv_ns) / recv_span, 1) if recv_span > 0 else None,
    }
    if datagram_len is not None and recv_span > 0:
        out["receive_mbps"] = round(float(datagram_len[first_ids].sum()) * 8 / recv_span / 1e6, 3)
    return out


def _latency_summary(latency_ns: np.ndarray) -> dict[str, float] | None:
    if len(latency_ns) == 0:
        return None
    p50, p90, p99 = np.percentile(latency_ns, [50, 90, 99]) / 1000
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "p99": round(float(p99), 1),
            "max": round(float(latency_ns.max()) / 1000, 1)}


def _timeline(send_ns: np.ndarray, recv_ns: np.ndarray, latency_ns: np.ndarray, start_ns: int,
              bin_ns: int) -> list[dict[str, Any]]:
    """Per bin after the start: packets sent, packets received (first arrivals), their p50 latency."""
    if len(send_ns) == 0:
        return []
    sent_bin = (send_ns - start_ns) // bin_ns
    recv_bin = np.maximum(recv_ns - start_ns, 0) // bin_ns
    n_bins = int(max(sent_bin.max(), recv_bin.max() if len(recv_bin) else 0)) + 1
    sent_count = np.bincount(sent_bin, minlength=n_bins)
    recv_count = np.bincount(recv_bin, minlength=n_bins)
    order = np.argsort(recv_bin, kind="stable")
    bounds = np.searchsorted(recv_bin[order], np.arange(n_bins + 1))
    by_bin = latency_ns[order]
    timeline = []
    for b in range(n_bins):
        chunk = by_bin[bounds[b]: bounds[b + 1]]
        p50 = round(float(np.median(chunk)) / 1000, 1) if len(chunk) else None
        p99 = round(float(np.percentile(chunk, 99)) / 1000, 1) if len(chunk) else None
        timeline.append({"t_ms": b * bin_ns // 1_000_000, "sent": int(sent_count[b]),
                         "received": int(recv_count[b]), "p50_us": p50, "p99_us": p99})
    return timeline


# ---------------------------------------------------------------------------------------------
# NF drop counters (deft-ctl status of --node)


# Counters of `deft-ctl status` (runtime/node/status.py) that count packets lost inside the node:
# ingress drops by parse reason and full stamping-unit rings, NF verdicts and overflowing
# pending buffers in the workers, failed egress sends. ingress.counters.dropped is left out:
# it is the sum of ingress.drops.*. When none of these paths is present (the status format
# changed), any integer whose path mentions "drop" is taken instead.
DROP_COUNTER_PATTERNS = (
    r"ingress\.drops\.\w+",
    r"ingress\.counters\.unit_ring_full",
    r"instances\[\d+\]\.counters\.(dropped_by_nf|pending_overflow)",
    r"egress\.counters\.send_errors",
)
_DROP_PATH = re.compile("|".join(f"(?:{p})" for p in DROP_COUNTER_PATTERNS))


def fetch_drop_counters(node: str, timeout_ms: int = 2000) -> tuple[dict[str, int] | None, str | None]:
    """Drop counters of a deft-node as {dotted path: value}, or (None, why not)."""
    try:
        from deft.tools.ctl import query  # optional: the traffic generator works without it
    except ImportError:
        return None, "deft.tools.ctl.query is not available"
    try:
        status = query(node, dict(STATUS_REQUEST), timeout_ms)
    except Exception as exc:  # noqa: BLE001  a failed status query must not fail the traffic run
        return None, f"status query to {node} failed: {type(exc).__name__}: {exc}"
    return drop_counters(status), None


def drop_counters(status: dict[str, Any]) -> dict[str, int]:
    """The loss counters of a status reply (see DROP_COUNTER_PATTERNS)."""
    leaves = _integer_leaves(status, "")
    known = {k: v for k, v in leaves.items() if _DROP_PATH.fullmatch(k)}
    return known or {k: v for k, v in leaves.items() if "drop" in k.lower()}


def _integer_leaves(tree: Any, path: str) -> dict[str, int]:
    """Every integer (not bool) in nested dicts and lists, keyed by its dotted path."""
    out: dict[str, int] = {}
    if isinstance(tree, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in tree.items())
    elif isinstance(tree, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(tree))
    else:
        return out
    for sub, value in items:
        if isinstance(value, (dict, list)):
            out.update(_integer_leaves(value, sub))
        elif isinstance(value, int) and not isinstance(value, bool):
            out[sub] = value
    return out


def drop_difference(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return {"total": sum(changed.values()), "counters": changed}



# ---------------------------------------------------------------------------------------------
# The human-readable report


def format_report(r: dict[str, Any]) -> str:
    """The report as a short human-readable text."""
    plan = r["plan"]
    if plan["mode"] == "pcap":
        what = f"pcap {plan['pcap']} ({plan['flows']} flows, {plan['untagged']} untagged, " \
               f"{plan['skipped_non_ipv4']} non-IPv4 skipped)"
    else:
        what = f"{plan['flows']} flows ({plan['tcp_flows']} tcp, {plan['udp_flows']} udp), " \
               f"{plan['frame_size']}-byte frames"
    offered = "max" if r["offered_rate_pps"] is None else f"{r['offered_rate_pps']:,.0f} pps"
    lat = r["latency_us"]
    lines = [
        f"{PROG}: {what}, vni {plan['vni']} -> {r['to']}, receiving on {r['listen']}",
        f"  sent        {r['sent']:>10,}   send errors {r['send_errors']}   untagged {r['untagged_sent']}",
        f"  received    {r['received']:>10,}   lost {r['lost']:,} ({100 * r['loss_ratio']:.3f}%, "
        f"{r['flows_with_loss']} flows)   duplicated {r['duplicated']:,}   "
        f"reordered {r['reordered']:,} in {r['reordered_flows']} flows   remapped flows {r.get('remapped_flows')}"
        f"   foreign {r['foreign']:,}",
        f"  nf drops    {_format_drops(r)}",
        f"  rate        offered {offered}   sent {_pps(r['send_rate_pps'])}   received "
        f"{_pps(r['receive_rate_pps'])}" + (f" ({r['receive_mbps']:.1f} Mbit/s)" if "receive_mbps" in r else ""),
        "  latency     " + ("none received" if lat is None else
                            f"p50 {lat['p50']:.0f} us   p90 {lat['p90']:.0f} us   "
                            f"p99 {lat['p99']:.0f} us   max {lat['max']:.0f} us"),
    ]
    if r["receiver_overflow"]:
        lines.append(f"  WARNING     receiver buffer overflow: {r['receiver_overflow']:,} records not kept")
    lines.extend(_format_timeline(r["timeline"]))
    return "\n".join(lines)


def _pps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} pps"


def _format_drops(r: dict[str, Any]) -> str:
    if r["nf_drops"] is not None:
        return f"{r['nf_drops']['total']:,}" + "".join(
            f"   {k} +{v}" for k, v in sorted(r["nf_drops"]["counters"].items()))
    return f"n/a ({r['nf_drops_error']})" if r.get("nf_drops_error") else "n/a (no --node)"


def _format_timeline(timeline: list[dict[str, Any]]) -> list[str]:
    if len(timeline) > HUMAN_TIMELINE_MAX_BINS:
        return [f"  timeline    {len(timeline)} bins of 100 ms (in the --json report)"]
    lines = ["  timeline    t (s)      sent  received   p50 (us)"]
    for b in timeline:
        p50 = "-" if b["p50_us"] is None else f"{b['p50_us']:.0f}"
        lines.append(f"              {b['t_ms'] / 1000:5.1f} {b['sent']:9,} {b['received']:9,} {p50:>10}")
    return lines


def _runs(positions: np.ndarray) -> int:
    """How many runs of consecutive integers ``positions`` (sorted) holds."""
    return int(len(positions) and 1 + np.count_nonzero(np.diff(positions) != 1))
