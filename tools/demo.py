"""``make demo``: a DEFT node on loopback under traffic, with a report, then everything stopped.

    python -m deft.tools.demo [--rate 20000] [--seconds 10] [--keep-logs DIR]

1. writes a node config (NAT on two NF instances, free loopback ports),
2. starts ``deft-node`` and waits until every process reports ready,
3. drives ``deft-trafficgen`` through it (500 flows, half TCP with handshakes)
   while a second sender mixes in malformed datagrams,
4. prints the traffic report and ``deft-ctl status``,
5. drives a second run during which the io process (ingress, stamping unit,
   egress) is SIGKILLed twice (its hot standby takes over; the unit's input
   ring, flow table and journal are in shared memory, the UDP socket is the
   supervisor's),
6. stops the node by PID and checks that no shared memory is left.

Exit code 0 when the first run had no loss and no reordering, the second lost
at most the bursts the killed io had in hand, duplicated at most the datagram
it was sending and reordered nothing, and nothing was left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from deft.runtime.dataplane.frames import build_frame, ethernet_frame, ipv4_header, vxlan_wrap
from deft.tools.ctl import query, render_status
from deft.tools.localnode import LocalNode, node_config, write_config

GARBAGE = [
    b"\x08\x00",                                                               # short datagram
    b"\x00" * 8 + build_frame(1, 2, 17, 1, 2, b"x"),                           # VXLAN I flag clear
    vxlan_wrap(ethernet_frame(ipv4_header(1, 2, 17, 28, flags_frag=0x2000) + b"u" * 28), 9),  # fragment
]


def spray_garbage(ingress: str, stop: threading.Event) -> int:
    host, port = ingress[len("udp://"):].rsplit(":", 1)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            for d in GARBAGE:
                s.sendto(d, (host, int(port)))
                sent += 1
            stop.wait(0.05)
    return sent


def kill_run(node: LocalNode, ports: dict, tmp: Path, args) -> bool:
    """Traffic while the io is SIGKILLed twice; True if nothing was lost beyond the bursts in hand,
    at most the datagram being sent was repeated, and nothing was reordered."""
    seconds = max(args.seconds, 4.0)
    print(f"\n== failure drill: {args.rate} pps for {seconds:.0f} s; SIGKILL the io (ingress, stamping unit, "
          f"egress) at {seconds / 4:.0f} s and again at {seconds / 2:.0f} s")
    killed = []
    mappings_before = sum(i["nf_counters"].get("new_flows", 0) for i in node.status()["instances"])

    def killer():
        for at in (seconds / 4, seconds / 4):
            time.sleep(at)
            pid = node.status()["io"]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(("io", pid))

    thread = threading.Thread(target=killer)
    thread.start()
    report_path = tmp / "report-drill.json"
    gen = subprocess.run([sys.executable, "-m", "deft.tools.trafficgen", "--to", ports["ingress"],
                          "--listen", ports["egress"], "--flows", str(args.flows), "--rate", str(args.rate),
                          "--duration", str(seconds), "--json", str(report_path), "--quiet"])
    thread.join()
    if gen.returncode != 0:
        return False
    r = orjson.loads(report_path.read_bytes())
    st = node.status()
    print(f"== killed {', '.join(f'{role} (pid {pid})' for role, pid in killed)}; now io pid {st['io']['pid']}")
    new_mappings = sum(i["nf_counters"].get("new_flows", 0) for i in st["instances"]) - mappings_before
    print(f"== drill traffic: sent {r['sent']:,}, received {r['received']:,}, lost {r['lost']}, "
          f"duplicated {r['duplicated']}, reordered {r['reordered']}; NAT mappings made during the drill: "
          f"{new_mappings} (0: every flow kept its id, so its port)")
    return r["lost"] <= 2 * 256 and r["duplicated"] <= 2 and r["reordered"] == 0 and new_mappings == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-demo")
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flows", type=int, default=500)
    args = parser.parse_args(argv)
    node_id = f"demo{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="deft-demo-") as tmp:
        config = node_config(node_id, "nat", 2, {"public_ip": "203.0.113.1", "port_range": [10000, 60999]},
                             nf={"batch_size": 64, "buffer_batches": 32, "flush_us": 200})
        ports = {"ingress": config["ingress"]["listen"], "egress": config["egress"]["send_to"],
                 "control": config["node"]["control"]}
        print(f"== starting deft-node (NAT x2) id={node_id}: ingress {ports['ingress']}, egress {ports['egress']}, "
              f"control {ports['control']}")
        node = LocalNode.start(write_config(Path(tmp) / "node.toml", config), Path(tmp) / "node.log")
        ok = False
        try:
            st = node.wait_ready()
            print(f"== node up: supervisor pid {st['node']['pid']}, workers "
                  f"{[i['pid'] for i in st['instances']]}")
            print(f"== traffic: {args.flows} flows, {args.rate} pps for {args.seconds:.0f} s, "
                  f"plus malformed datagrams every 50 ms")
            stop = threading.Event()
            garbage = {}
            sprayer = threading.Thread(target=lambda: garbage.update(n=spray_garbage(ports["ingress"], stop)))
            sprayer.start()
            report_path = Path(tmp) / "report.json"
            gen = subprocess.run([sys.executable, "-m", "deft.tools.trafficgen", "--to", ports["ingress"],
                                  "--listen", ports["egress"], "--flows", str(args.flows), "--rate", str(args.rate),
                                  "--duration", str(args.seconds), "--node", ports["control"],
                                  "--json", str(report_path)])
            stop.set()
            sprayer.join()
            report = orjson.loads(report_path.read_bytes()) if gen.returncode == 0 else {}
            time.sleep(0.2)
            st = query(ports["control"], {"cmd": "status"})
            print("\n== deft-ctl status")
            print(render_status(st))
            dropped = sum(st["ingress"]["drops"].values())
            print(f"\n== malformed datagrams sent {garbage.get('n', 0)}, counted as ingress drops {dropped}")
            ok = (gen.returncode == 0 and report.get("lost") == 0 and report.get("reordered") == 0
                  and dropped == garbage.get("n", 0))
            ok = kill_run(node, ports, Path(tmp), args) and ok
        finally:
            left = node.stop()
        print(f"== node stopped (exit {node.proc.returncode}); shared memory left behind: {left or 'none'}")
        ok = ok and not left and node.proc.returncode == 0
        print(f"== demo {'PASSED: no loss, no reordering, garbage counted, io kills survived' if ok else 'FAILED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
