"""The command line of deft-trafficgen: options, validation, ``run()`` and ``main()``.

The manual (options, report, exit status) is the package docstring, ``deft.tools.trafficgen``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from deft.runtime.dataplane.packet import MAX_FRAME
from deft.tools.progress import ProgressLine
from deft.tools.trafficgen.common import PROG, TrafficGenError
from deft.tools.trafficgen.plan import (
    MIN_TCP_FRAME,
    MIN_UDP_FRAME,
    PacketPlan,
    build_pcap_plan,
    build_synthetic_plan,
    make_flows,
)
from deft.tools.trafficgen.receiver import Received, ReceiverProcess
from deft.tools.trafficgen.report import analyze, drop_difference, fetch_drop_counters, format_report
from deft.tools.trafficgen.sender import SendLog, TrafficSender


def parse_udp_url(text: str, option: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """``udp://HOST:PORT`` (HOST may be [IPv6]) -> (host, port); ValueError names the option."""
    usage = f"{option}: expected udp://HOST:PORT, got {text!r}"
    if not text.startswith("udp://"):
        raise ValueError(usage)
    rest = text[len("udp://"):]
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not host or not sep or not port_text.isdigit():
        raise ValueError(usage)
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise ValueError(f"{option}: port {port} out of range 1..65535 in {text!r}")
    return host, port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Send tagged VXLAN traffic and report loss, "
                                "order and latency of what comes back (see the module docstring).")
    p.add_argument("--to", required=True, metavar="udp://HOST:PORT", help="where to send")
    p.add_argument("--listen", required=True, metavar="udp://HOST:PORT", help="where traffic comes back")
    p.add_argument("--flows", type=int, default=100, metavar="N", help="distinct flows (default 100)")
    p.add_argument("--rate", type=float, default=10000, metavar="PPS",
                   help="packets/s, 0 = as fast as possible (default 10000)")
    p.add_argument("--packets", type=int, default=None, metavar="N",
                   help="packets to send (default: rate x duration, else 10000)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop sending after S seconds")
    p.add_argument("--size", type=int, default=128, metavar="BYTES",
                   help="inner Ethernet frame size (default 128)")
    p.add_argument("--hot-flows", type=int, default=0, metavar="K",
                   help="skew: the first K flows carry --hot-share of the packets (default 0: even)")
    p.add_argument("--hot-share", type=float, default=0.5, metavar="S", help="share of the hot flows (default 0.5)")
    p.add_argument("--tcp-ratio", type=float, default=0.5, metavar="R", help="share of TCP flows (default 0.5)")
    p.add_argument("--vni", type=int, default=100, help="VXLAN network identifier (default 100)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="seed of addresses, ports and order")
    p.add_argument("--pcap", metavar="FILE", help="replay a classic pcap file (Ethernet) instead")
    p.add_argument("--pcap-timing", action="store_true", help="replay at the file's own timing")
    p.add_argument("--node", metavar="tcp://HOST:PORT", help="deft-node control address for drop counters")
    p.add_argument("--drain-ms", type=float, default=500, metavar="MS",
                   help="silence to wait for after the last send (default 500)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no report on stdout, no progress line")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; exits with status 2 and a message naming the option on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _validate(args: argparse.Namespace) -> None:
    """Resolve URLs and packet counts into args; ValueError names the option at fault."""
    args.listen_addr = parse_udp_url(args.listen, "--listen", allow_port_zero=True)
    args.loopback = args.to == args.listen
    args.to_addr = parse_udp_url(args.to, "--to", allow_port_zero=args.loopback)
    if args.node is not None and "://" not in args.node:
        raise ValueError(f"--node: expected tcp://HOST:PORT, got {args.node!r}")
    checks = [
        (args.flows >= 1, f"--flows: must be at least 1, got {args.flows}"),
        (0 <= args.hot_flows < max(args.flows, 1) or args.hot_flows == 0,
         f"--hot-flows: must be 0..{args.flows - 1} (fewer than --flows), got {args.hot_flows}"),
        (0.0 < args.hot_share < 1.0, f"--hot-share: must be between 0 and 1, got {args.hot_share}"),
        (args.rate >= 0, f"--rate: must be >= 0, got {args.rate:g}"),
        (args.packets is None or args.packets >= 1, f"--packets: must be at least 1, got {args.packets}"),
        (args.duration is None or args.duration > 0, f"--duration: must be > 0, got {args.duration}"),
        (0 <= args.tcp_ratio <= 1, f"--tcp-ratio: must be in 0..1, got {args.tcp_ratio:g}"),
        (0 <= args.vni < 1 << 24, f"--vni: must be in 0..16777215, got {args.vni}"),
        (args.drain_ms >= 0, f"--drain-ms: must be >= 0, got {args.drain_ms:g}"),
        (not args.pcap_timing or args.pcap, "--pcap-timing: needs --pcap"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if args.pcap is None:
        _validate_synthetic(args)


def _validate_synthetic(args: argparse.Namespace) -> None:
    minimum = MIN_TCP_FRAME if args.tcp_ratio > 0 else MIN_UDP_FRAME
    if not minimum <= args.size <= MAX_FRAME:
        what = "Ethernet 14 + IPv4 20 + " + ("TCP 20" if minimum == MIN_TCP_FRAME else "UDP 8") + " + trailer 20"
        raise ValueError(f"--size: must be in {minimum}..{MAX_FRAME} ({what}), got {args.size}")
    if args.packets is None:
        if args.duration is None:
            args.packets = 10000
        elif args.rate > 0:
            args.packets = max(1, math.ceil(args.rate * args.duration))
        else:
            raise ValueError("--duration: with --rate 0 also give --packets (packets are built before sending)")


def run(args: argparse.Namespace | Sequence[str]) -> dict[str, Any]:
    """Run one measurement and return the report (also printed / written as the options say)."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args))
    plan = _build_plan(args)
    if plan.count == 0:
        raise TrafficGenError("nothing to send (the pcap file has no replayable frames)")
    progress = ProgressLine(sys.stderr, enabled=False if args.quiet else None)
    before = after = None
    drops_error = None
    if args.node:
        before, drops_error = fetch_drop_counters(args.node)
    host, port = args.listen_addr
    # Room for every packet plus a tenth duplicated; more is counted as receiver_overflow.
    capacity = plan.count + max(4096, plan.count // 10)
    with ReceiverProcess(host, port, capacity, args.drain_ms) as receiver:
        args.bound_port = bound_port = receiver.start()
        to = (host, bound_port) if args.loopback else args.to_addr
        with TrafficSender(plan, to) as sender:
            log = sender.send(args.rate, args.duration, use_offsets=args.pcap_timing, progress=progress)
        progress.update(f"{PROG}: sent {log.attempted}; draining {args.drain_ms:g} ms", force=True)
        received = receiver.finish()
    progress.close()
    if args.node and before is not None:
        after, drops_error = fetch_drop_counters(args.node)
    report = _assemble_report(args, plan, log, received, before, after, drops_error)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    if not args.quiet:
        print(format_report(report))
    return report


def _build_plan(args: argparse.Namespace) -> PacketPlan:
    if args.pcap:
        try:
            return build_pcap_plan(args.pcap, args.vni, args.packets)
        except OSError as exc:
            raise TrafficGenError(f"--pcap {args.pcap}: {exc.strerror or exc}") from None
    flows = make_flows(args.flows, args.tcp_ratio, args.seed)
    return build_synthetic_plan(flows, args.packets, args.size, args.vni, args.seed,
                                hot_flows=args.hot_flows, hot_share=args.hot_share)


def _assemble_report(args: argparse.Namespace, plan: PacketPlan, log: SendLog, received: Received,
                     before: dict[str, int] | None, after: dict[str, int] | None,
                     drops_error: str | None) -> dict[str, Any]:
    listen = args.listen
    if args.listen_addr[1] == 0:            # show the port the receiver really bound
        listen = args.listen[: args.listen.rindex(":") + 1] + str(args.bound_port)
    report: dict[str, Any] = {"to": listen if args.loopback else args.to, "listen": listen,
                              "plan": plan.info, "planned_packets": plan.count}
    report["offered_rate_pps"] = None if (args.rate == 0 or args.pcap_timing) else args.rate
    report.update(analyze(plan.pkt_flow, plan.pkt_flow_seq, log, received, plan.datagram_lengths()))
    report["nf_drops"] = drop_difference(before, after) if (before is not None and after is not None) else None
    if args.node:
        report["nf_drops_error"] = drops_error
    report["socket_buffers"] = {"sndbuf": log.sndbuf_bytes, "rcvbuf": received.rcvbuf_bytes}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (TrafficGenError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0
