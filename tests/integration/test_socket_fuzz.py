"""Fuzzing every socket of a running cluster (hypothesis): a node's control socket (every command with
random fields, and raw bytes), a worker's fabric and 2PC sockets, the controller's heartbeat and
control sockets get random, truncated, oversized and wrong-kind frames. Nothing dies, the garbage
is counted, the assignment is untouched, and traffic afterwards loses nothing."""

from __future__ import annotations

import time

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deft.runtime.sockets import make_socket, send_nowait
from deft.tools.drills import healthy, start_traffic, traffic_report, wait_for
from deft.tools.localnode import LocalCluster

from .test_failover import assert_no_harm, processes

pytestmark = pytest.mark.slow

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
# every command a node serves except the drill that kills (its job is to kill)
NODE_CMDS = ["status", "set_routes", "freeze", "move", "bucket_load", "get_routes", "lease", "raft_transfer",
             "global_get", "global_op", "raft_member", "unknown", 3]
FIELDS = ["pair", "instance", "epoch", "op", "buckets", "rows", "term", "controller", "holder", "lease_ms", "seq",
          "key", "args", "id", "to", "pairs", "nodes", "n_buckets", "bucket_pairs"]
frames = st.lists(st.binary(max_size=96) | st.sampled_from([b"H", b"F", b"P", b"D", b"\x01", b"{}", b"x" * 70_000]),
                  min_size=1, max_size=4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    cluster = LocalCluster(tmp, "fz", n_nodes=2, replicate=True)
    try:
        yield cluster.wait_ready()
    finally:
        left = cluster.stop()
        assert not any(left.values()), left


@pytest.fixture(scope="module")
def endpoints(cluster):
    cfg = cluster.configs[1].read_text()
    base = {k: cfg.split(f'{k} = "')[1].split('"')[0] for k in ("fabric", "replication", "copies")}
    return {"node": cluster.nodes[1].control, "fabric": base["fabric"], "replication": base["replication"],
            "copies": base["copies"], "controller": cluster.ctl.control, "heartbeats": cluster.ctl.heartbeats}


def pids(cluster) -> list:
    return sorted(p["pid"] for node in cluster.nodes for p in processes(node.status()))


@pytest.fixture(scope="module")
def before(cluster):
    st = wait_for(cluster, healthy)
    return {"pids": pids(cluster), "pairs": [(p["primary"], p["secondary"]) for p in st["pairs"]]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(NODE_CMDS), fields=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
       raw=st.binary(max_size=64), as_raw=st.booleans())
def test_a_nodes_control_socket_answers_anything(cluster, endpoints, before, cmd, fields, raw, as_raw):
    payload = raw if as_raw else {"cmd": cmd, **fields}
    sock = make_socket(zmq.Context.instance(), zmq.DEALER, connect=endpoints["node"])
    try:
        sock.send(payload if isinstance(payload, bytes) else orjson.dumps(payload))
        assert sock.poll(3000), f"no answer to {payload!r}"
        reply = orjson.loads(sock.recv())
    finally:
        sock.close()
    assert isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert reply["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["fabric", "replication", "copies", "heartbeats"]), msg=frames,
       kind=st.sampled_from([zmq.PUSH, zmq.DEALER, zmq.PUB]))
def test_data_sockets_drop_garbage(cluster, endpoints, before, where, msg, kind):
    if where == "heartbeats":
        kind = zmq.PUB
    elif where in ("fabric", "copies"):
        kind = zmq.PUSH
    elif kind == zmq.PUB:
        kind = zmq.DEALER
    sock = make_socket(zmq.Context.instance(), kind, connect=endpoints[where])
    try:
        if kind == zmq.PUB:
            time.sleep(0.02)   # a PUB drops what it sends before the subscriber is connected
        # never blocking: a PUSH is refused by the 2PC ROUTER at the handshake (wrong socket type), and
        # once refused it has no peer, so a blocking send would wait for ever (it hung a CI run)
        send_nowait(sock, msg)
        time.sleep(0.002)
    finally:
        sock.close()


def test_after_the_fuzz_nothing_changed_and_traffic_is_whole(cluster, before, tmp_path):
    time.sleep(0.5)
    assert pids(cluster) == before["pids"]                      # nothing died, nothing restarted
    st = wait_for(cluster, healthy)
    assert [(p["primary"], p["secondary"]) for p in st["pairs"]] == before["pairs"]
    assert st["controller"]["counters"]["bad_frames"] > 0       # the heartbeat garbage was counted
    node = cluster.nodes[1].status()
    counted = sum(i["counters"].get(k, 0) for i in node["instances"]
                  for k in ("remote_bad_frames", "repl_bad_frames", "copies_bad_frames"))
    assert counted > 0
    report = traffic_report(start_traffic(cluster, tmp_path / "report.json", 200, 1000, 2.0), tmp_path / "report.json")
    assert report["received"] > 1500
    assert_no_harm(report, cluster)
