"""A real deft-node on loopback under deft-trafficgen: loss, order, garbage, a killed worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson
import pytest
import zmq

from deft.runtime.dataplane.frames import build_frame, ethernet_frame, ipv4_header, vxlan_wrap
from deft.runtime.params import split_host_port
from deft.runtime.procs.ingress import BURST

from .conftest import run_trafficgen

pytestmark = pytest.mark.slow


def test_zero_loss_and_order_at_a_moderate_rate(start_node, tmp_path):
    node = start_node(kind="nat", instances=2)
    report = run_trafficgen(node, tmp_path, "--flows", "300", "--rate", "5000", "--packets", "15000",
                            "--tcp-ratio", "0.5", "--node", node.control)
    assert report["sent"] == 15000
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    st = node.status()
    assert st["ingress"]["counters"]["accepted"] == 15000
    assert sum(i["counters"]["released"] for i in st["instances"]) == 15000
    assert all(i["counters"]["processed"] > 0 for i in st["instances"])  # both instances got flows
    assert st["egress"]["counters"]["sent"] == 15000


GARBAGE = {
    "short_datagram": b"\x08\x00",
    "vxlan_flag": b"\x00" * 8 + build_frame(1, 2, 17, 1, 2, b"x"),
    "not_ipv4": vxlan_wrap(ethernet_frame(b"\x60" + b"\x00" * 39, ethertype=0x86DD), 9),
    "fragment": vxlan_wrap(ethernet_frame(ipv4_header(1, 2, 17, 28, flags_frag=0x2000) + b"u" * 28), 9),
    "unsupported_proto": vxlan_wrap(ethernet_frame(ipv4_header(1, 2, 47, 8) + b"g" * 8), 9),
    "truncated_ip": vxlan_wrap(build_frame(1, 2, 17, 1, 2, b"x" * 20)[:30], 9),
}


def test_garbage_is_counted_and_does_not_disturb_good_packets(start_node, tmp_path):
    node = start_node(kind="nat", instances=2)
    host, port = split_host_port(node.ingress.partition("://")[2])
    rounds = 50
    stop = threading.Event()

    def spray():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(rounds):
                for datagram in GARBAGE.values():
                    s.sendto(datagram, (host, port))
                time.sleep(0.02)
        stop.set()

    sprayer = threading.Thread(target=spray)
    sprayer.start()
    report = run_trafficgen(node, tmp_path, "--flows", "100", "--rate", "3000", "--packets", "6000")
    sprayer.join()
    assert (report["lost"], report["duplicated"], report["reordered"], report["foreign"]) == (0, 0, 0, 0)
    drops = node.status()["ingress"]["drops"]
    for reason in GARBAGE:
        assert drops[reason] == rounds, (reason, drops)


def test_killed_worker_is_reported_and_restarted(start_node, tmp_path):
    node = start_node(kind="flowcounter", instances=2)
    before = node.status()["instances"][0]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        inst = node.status()["instances"][0]
        if inst["restarts"] == 1 and inst["ready"]:
            break
        time.sleep(0.05)
    assert inst["restarts"] == 1 and inst["alive"] and inst["pid"] != before["pid"]
    assert inst["last_exit"] == -signal.SIGKILL
    # the restarted worker (state lost, as expected without replication) carries traffic again
    report = run_trafficgen(node, tmp_path, "--flows", "100", "--rate", "3000", "--packets", "3000")
    assert (report["lost"], report["reordered"]) == (0, 0)
    assert node.status()["instances"][0]["counters"]["processed"] > 0


def test_worker_killed_under_traffic_loses_only_what_it_held(start_node, tmp_path):
    node = start_node(kind="nat", instances=2)
    victim = node.status()["instances"][1]["pid"]
    timer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))
    timer.start()
    report = run_trafficgen(node, tmp_path, "--flows", "200", "--rate", "4000", "--packets", "12000")
    timer.join()
    st = node.status()
    assert st["instances"][1]["restarts"] == 1
    # without replication a crash loses at most what the worker held: its input ring and output buffer
    held = 2048 + 64
    assert report["lost"] <= held, report["lost"]
    assert report["received"] >= 12000 - held
    assert report["duplicated"] <= 64 + 256  # at most re-read of records it had not released from its ring


def test_control_socket_survives_garbage_frames(start_node):
    node = start_node(kind="flowcounter", instances=1)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(node.control)
    try:
        for frame in [b"", b"\xff\xfe", b"[1,2]", b'{"cmd": 5}', b'{"cmd": "nope"}', os.urandom(100)]:
            sock.send(frame)
            assert sock.poll(3000)
            reply = orjson.loads(sock.recv())
            assert reply["ok"] is False and reply["error"]
    finally:
        sock.close()
    st = node.status()
    assert st["node"]["control_bad_requests"] == 6


def test_ctl_status_json_lists_pids(start_node):
    node = start_node(kind="flowcounter", instances=2)
    out = subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--node", node.control, "status", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    st = orjson.loads(out.stdout)
    assert st["node"]["id"] == node.node_id and st["node"]["pid"] == node.proc.pid
    assert [i["id"] for i in st["instances"]] == [f"{node.node_id}/nf0", f"{node.node_id}/nf1"]
    assert all(i["pid"] and i["role"] == "primary" for i in st["instances"])
    text = subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--node", node.control, "status"],
                          capture_output=True, text=True, timeout=30)
    assert f"node {node.node_id}" in text.stdout


def test_bad_config_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[node]\nid = "x"\n[nf]\nkind = "nat"\nbatch_size = -1\n[nf.params]\npublic_ip = "1.2.3.4"\n')
    out = subprocess.run([sys.executable, "-m", "deft.runtime.node", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "bad.toml: [nf] batch_size: must be >= 1, got -1" in out.stderr


def test_ctl_reports_a_node_that_does_not_answer():
    out = subprocess.run([sys.executable, "-m", "deft.tools.ctl", "--node", "tcp://127.0.0.1:9",
                          "--timeout-ms", "300", "status"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no answer" in out.stderr


def test_a_killed_io_is_restarted_and_the_node_carries_traffic_again(start_node, tmp_path):
    node = start_node(kind="nat", instances=2)
    victim = node.status()["io"]
    timer = threading.Timer(0.5, os.kill, (victim["pid"], signal.SIGKILL))
    timer.start()
    run_trafficgen(node, tmp_path, "--flows", "100", "--rate", "3000", "--packets", "4500")  # kill lands mid-run
    timer.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc = node.status()["io"]
        if proc["restarts"] == 1 and proc["ready"]:
            break
        time.sleep(0.05)
    assert proc["restarts"] == 1 and proc["ready"] and proc["pid"] != victim["pid"]
    report = run_trafficgen(node, tmp_path, "--flows", "100", "--rate", "3000", "--packets", "3000")
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)


def test_io_killed_repeatedly_loses_at_most_the_burst_in_hand(start_node, tmp_path):
    """The io does the ingress, the stamping units and the egress. The supervisor owns the UDP socket
    (queued datagrams wait in the kernel for the standby), the units' input rings, flow tables and
    journals are shared memory (a successor stamps again exactly what a dead one was stamping: no
    flow gets a second id, seqs go on), and the egress releases each datagram from its ring as it
    sends it. So a kill costs at most the burst read and not yet in a unit's ring, and repeats at
    most the datagram being sent."""
    node = start_node(kind="nat", instances=2)
    kills = []

    def killer():
        for _ in range(3):
            time.sleep(0.9)
            pid = node.status()["io"]["pid"]
            kills.append(pid)
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    report = run_trafficgen(node, tmp_path, "--flows", "300", "--rate", "2500", "--packets", "10000")
    t.join()
    st = node.status()
    assert st["io"]["restarts"] == 3 and len(set(kills)) == 3
    # a burst is what queued while the io waited for a core: a datagram or two at 2.5 kpps on a quiet
    # machine, 32 over three kills once in a loaded suite run; so its shape is asserted: one run of
    # consecutive datagrams per kill, each at most BURST
    assert report["lost_runs"] <= 3 and report["lost"] <= 3 * BURST, report["lost_sample"]
    assert report["duplicated"] <= 3 and report["reordered"] == 0, report
    assert st["units"][0]["counters"]["new_flows"] <= 300  # no flow got a second id
    assert sum(i["nf_counters"]["new_flows"] for i in st["instances"]) == 300  # each flow got one port

