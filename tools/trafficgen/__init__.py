"""deft-trafficgen: send tagged VXLAN traffic, receive it back, report loss, order and latency.

SYNOPSIS
    deft-trafficgen --to udp://HOST:PORT --listen udp://HOST:PORT
                    [--flows N] [--rate PPS] [--packets N] [--duration S]
                    [--size BYTES] [--tcp-ratio R] [--vni VNI] [--seed N]
                    [--pcap FILE [--pcap-timing]] [--node tcp://HOST:PORT]
                    [--drain-ms MS] [--json FILE] [--quiet]

DESCRIPTION
    Sends VXLAN (RFC 7348) datagrams carrying Ethernet + IPv4 + UDP/TCP frames
    to --to, receives whatever comes back on --listen in a separate process,
    and matches the two by a 20-byte trailer at the end of every packet's
    payload (magic, packet id, send time; see ``deft.tools.trailer``). NFs
    rewrite headers, never payloads, so matching survives a NAT in between.

    Synthetic traffic (the default): --flows distinct 5-tuples (10.0.0.0/8 ->
    198.51.100.0/24), a --tcp-ratio share of them TCP. A TCP flow opens with a
    handshake (SYN, SYN-ACK from the server side, ACK), carries ACK|PSH data
    and ends with FIN|ACK when its packets run out; a UDP flow is just data.
    Every packet, handshake included, carries a payload ending in the trailer
    (data on a SYN is legal, as in TCP Fast Open), so every packet is matched.
    Packets go round-robin over the flows, in a seeded random order within
    each round, so flows interleave but each flow's packets leave in order.

    All packets are built before the clock starts: one template per flow and
    packet kind with correct checksums. Per packet the sender only writes the
    trailer (and the TCP sequence number) and patches the L4 checksum
    incrementally (one's-complement arithmetic, see ``checksum_delta``).
    Pacing sends small bursts against a monotonic schedule; it never sleeps
    per packet. --rate 0 sends as fast as possible.

    The report: sent, received, lost, duplicated, reordered (per flow: a
    packet arriving after one with a higher per-flow sequence number of the
    same flow; flows are bidirectional 5-tuples), foreign (datagrams without a
    valid trailer, or with a trailer this run did not send), NF drop counters
    of --node (before/after difference), offered / achieved send / receive
    rates, latency percentiles, and a 100 ms timeline. Loss does not change
    the exit status: it is in the report.

OPTIONS
    --to udp://HOST:PORT      where to send (a DEFT ingress, a reference NAT, or --listen itself)
    --listen udp://HOST:PORT  where the traffic comes back; --to equal to --listen is the
                              loopback check: the harness ceiling with nothing in between
    --flows N                 distinct flows (default 100)
    --rate PPS                packets per second, 0 = as fast as possible (default 10000)
    --packets N               packets to send (default: rate x duration, else 10000)
    --duration S              stop sending after S seconds (default: when the packets are sent)
    --size BYTES              inner Ethernet frame size, 62..1518 (74 with TCP) (default 128)
    --tcp-ratio R             share of TCP flows, 0..1 (default 0.5)
    --vni VNI                 VXLAN network identifier (default 100)
    --seed N                  seeds addresses, ports, ISNs and the interleaving (default 1)
    --pcap FILE               replay the Ethernet frames of a classic pcap file instead:
                              IPv4 UDP/TCP packets get the trailer appended (IPv4 total
                              length, UDP length and checksums fixed); other IPv4 packets
                              (ICMP, fragments) are sent unchanged and counted as untagged
                              (they come back as foreign); non-IPv4 frames are skipped and
                              counted. --packets limits the count; the file is not looped.
    --pcap-timing             with --pcap: keep the file's own inter-packet gaps (--rate is
                              then ignored); without it --rate applies, 0 = as fast as possible.
                              --flows, --size, --tcp-ratio and --seed do not apply to a replay.
    --node tcp://HOST:PORT    a deft-node control address: report its drop counters' change
    --drain-ms MS             after the last send, wait for MS of silence (default 500)
    --json FILE               also write the report as JSON
    --quiet                   no human-readable report, no progress line

    A progress line goes to stderr when stderr is a terminal.

EXIT STATUS
    0 the run completed (whatever the loss); 1 a runtime failure (cannot bind,
    unreadable pcap, receiver died); 2 bad arguments.

EXAMPLE
    deft-trafficgen --to udp://127.0.0.1:4790 --listen udp://127.0.0.1:4790 --rate 50000 --packets 100000
    deft-trafficgen --to udp://127.0.0.1:4789 --listen udp://127.0.0.1:4790 --flows 500 \\
                    --rate 20000 --duration 10 --node tcp://127.0.0.1:7101 --json report.json

PYTHON
    report = run(["--to", url, "--listen", url, "--packets", "2000"])   # or run(parse_args(...))

    plan = build_synthetic_plan(make_flows(50, 0.5, seed=1), packets=2000, frame_size=128, vni=100)
    with TrafficSender(plan, ("127.0.0.1", 4789)) as sender:
        log = sender.send(rate=20000)           # SendLog: send time per packet id

    ``analyze(plan.pkt_flow, plan.pkt_flow_seq, log, received)`` is the pure
    analysis behind the report. The receiver is a spawned process, which
    imports the caller's main module: a script calling run() needs the usual
    ``if __name__ == "__main__":`` guard.

    The package: ``plan`` (flows, templates, synthetic and pcap plans),
    ``sender`` (pacing, the send loop), ``receiver`` (the receiving process),
    ``report`` (analysis, NF drop counters, the text report), ``cli``
    (options, ``run``, ``main``), ``common`` (program name, error type, UDP
    socket setup); everything named above is importable from
    ``deft.tools.trafficgen`` itself.
"""

from deft.tools.trafficgen.cli import build_parser as build_parser
from deft.tools.trafficgen.cli import main as main
from deft.tools.trafficgen.cli import parse_args as parse_args
from deft.tools.trafficgen.cli import parse_udp_url as parse_udp_url
from deft.tools.trafficgen.cli import run as run
from deft.tools.trafficgen.common import TrafficGenError as TrafficGenError
from deft.tools.trafficgen.plan import Flow as Flow
from deft.tools.trafficgen.plan import PacketPlan as PacketPlan
from deft.tools.trafficgen.plan import build_pcap_plan as build_pcap_plan
from deft.tools.trafficgen.plan import build_synthetic_plan as build_synthetic_plan
from deft.tools.trafficgen.plan import make_flows as make_flows
from deft.tools.trafficgen.receiver import Received as Received
from deft.tools.trafficgen.receiver import ReceiverProcess as ReceiverProcess
from deft.tools.trafficgen.report import analyze as analyze
from deft.tools.trafficgen.report import drop_counters as drop_counters
from deft.tools.trafficgen.report import drop_difference as drop_difference
from deft.tools.trafficgen.report import fetch_drop_counters as fetch_drop_counters
from deft.tools.trafficgen.report import format_report as format_report
from deft.tools.trafficgen.sender import SendLog as SendLog
from deft.tools.trafficgen.sender import TrafficSender as TrafficSender
