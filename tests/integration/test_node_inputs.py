"""The other inputs and outputs: pcap replay into a node, and the local shm ring path."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from deft.runtime.config import load_config
from deft.runtime.dataplane.frames import build_frame, vxlan_unwrap
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.ring import Ring
from deft.runtime.ring.fdbell import FdBell
from deft.runtime.topology import Topology
from deft.tools.pcap import write_pcap

pytestmark = pytest.mark.slow


def frames(n: int, flows: int) -> list[bytes]:
    return [build_frame(0x0A000000 + i % flows, 0xC6336401, 17, 2000 + i % flows, 53, i.to_bytes(4, "big") * 8)
            for i in range(n)]


def test_pcap_replay_goes_through_nat_in_per_flow_order(start_node, tmp_path):
    pcap = tmp_path / "in.pcap"
    sent = frames(300, flows=7)
    write_pcap(pcap, [(i * 1000, f) for i, f in enumerate(sent)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # the replay arrives as one burst
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        egress = f"udp://127.0.0.1:{rx.getsockname()[1]}"
        node = start_node(kind="nat", instances=2, ingress={"listen": f"pcap://{pcap}"},
                          egress={"send_to": egress})
        got = []
        while len(got) < len(sent):
            try:
                vni, frame = vxlan_unwrap(rx.recv(4096))
            except TimeoutError:
                raise AssertionError(f"{len(got)} received; status {node.status()}") from None
            got.append(frame)
    st = node.status()
    assert st["ingress"]["counters"]["accepted"] == 300
    seen: dict[int, list[int]] = {}
    for frame in got:
        assert frame[26:30] == bytes([203, 0, 113, 1])  # translated source
        idx = int.from_bytes(frame[42:46], "big")
        seen.setdefault(idx % 7, []).append(idx)
    assert all(v == sorted(v) for v in seen.values())
    assert sorted(i for v in seen.values() for i in v) == list(range(300))


def test_shm_input_and_output_rings(start_node):
    node = start_node(kind="flowcounter", instances=2, ingress={"listen": "shm://in"},
                      egress={"send_to": "shm://out"})
    topo = Topology(load_config(node.config_path))
    src = Ring.attach(topo.shm_input(), PACKET_DTYPE)
    sink = Ring.attach(topo.shm_output(), PACKET_DTYPE)
    bell = FdBell.attach(topo.ingress_bell())
    try:
        batch = empty_batch(500)
        for i, f in enumerate(frames(500, flows=11)):
            batch["frame"][i, : len(f)] = np.frombuffer(f, np.uint8)
            batch["frame_len"][i] = len(f)
            batch["vni"][i] = 42
        assert src.push_some(batch) == 500
        bell.ring()
        out = []
        deadline = time.monotonic() + 10
        while len(out) < 500 and time.monotonic() < deadline:
            view = sink.peek(512)
            out.extend(zip(view["flow_id"].tolist(), view["seq"].tolist(), view["vni"].tolist()))
            sink.release(len(view))
            time.sleep(0.01)
        assert len(out) == 500
        assert {v for _, _, v in out} == {42}
        per_flow: dict[int, list[int]] = {}
        for flow, seq, _ in out:
            per_flow.setdefault(flow, []).append(seq)
        assert len(per_flow) == 11
        assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in per_flow.values())
    finally:
        src.close()
        sink.close()
        bell.close()
    assert node.status()["egress"]["counters"]["sent"] == 500
