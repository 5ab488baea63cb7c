"""Fuzzing the controller's sockets in process (hypothesis): any frames on the heartbeat socket, any
request on the control socket, any lease request. Nothing raises, everything malformed is counted,
and a forged or replayed message changes no state it should not."""

from __future__ import annotations

import logging

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deft.runtime import wire
from deft.runtime.controller.lease import LeaseVoter, fenced, serve_request
from deft.runtime.controller.main import Controller, ControllerConfig
from deft.runtime.procs.common import StopFlag

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

BEAT = {"node": "n1", "pid": 7, "seq": 1, "control": "tcp://127.0.0.1:1", "fabric": "", "replication": "",
        "buckets": 16, "routes_epoch": 0, "instances": [{"id": "n1/nf0", "index": 0, "pid": 8, "alive": True,
                                                         "restarts": 0, "ready": True, "lag": 0, "busy_ns": 5,
                                                         "pairs": {"0": 3}, "in_ring": 0}],
        "controller_fence": [0, None]}
FAILED = {"node": "n1", "process": "nf0", "pid": 8, "exit": -9, "decisions": {"0": 4}}


@pytest.fixture(scope="module")
def controller():
    cfg = ControllerConfig(source="fuzz", control="tcp://127.0.0.1:*", heartbeats="tcp://127.0.0.1:*",
                           heartbeat_ms=10, miss_limit=5, fresh_grace_ms=500, manage_routes=True, expect_nodes=1)
    c = Controller(cfg, StopFlag(), logging.getLogger("fuzz"))
    try:
        yield c
    finally:
        c.close()


def mutated(base: dict, draw_key, value) -> dict:
    """``base`` with one field (at the top or in its first instance) replaced by ``value``."""
    out = orjson.loads(orjson.dumps(base))
    target = out["instances"][0] if draw_key.startswith("i.") and "instances" in out else out
    target[draw_key.removeprefix("i.")] = value
    return out


beat_keys = st.sampled_from([*BEAT, *(f"i.{k}" for k in BEAT["instances"][0]), "extra"])
failed_keys = st.sampled_from([*FAILED, "extra"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([wire.HEARTBEAT, wire.FAILED, wire.PACKETS, b"", b"HH", b"\xff"]),
       key=beat_keys | failed_keys, value=json_values, raw=st.binary(max_size=64),
       shape=st.sampled_from(["mutated", "raw", "frames"]))
def test_any_frame_on_the_heartbeat_socket_is_counted_never_fatal(controller, kind, key, value, raw, shape):
    before = dict(controller.counters)
    base = BEAT if kind == wire.HEARTBEAT else FAILED
    if shape == "mutated":
        frames = [kind, orjson.dumps(mutated(base, key, value))]
    elif shape == "raw":
        frames = [kind, raw]
    else:
        frames = [kind, raw, raw][: 1 + len(raw) % 3]
    controller.on_message(frames)   # must not raise
    after = controller.counters
    handled = (after["heartbeats"] - before["heartbeats"]) + (after["failure_notices"] - before["failure_notices"])
    assert handled + (after["bad_frames"] - before["bad_frames"]) >= 1


def test_a_replayed_beat_changes_nothing(controller):
    controller.on_message(wire.encode(wire.HEARTBEAT, dict(BEAT, node="r1", seq=10)))
    node = controller.view.nodes["r1"]
    controller.on_message(wire.encode(wire.HEARTBEAT, dict(BEAT, node="r1", seq=11, routes_epoch=3)))
    beats = node.beats
    controller.on_message(wire.encode(wire.HEARTBEAT, dict(BEAT, node="r1", seq=10, routes_epoch=9)))
    assert node.beats == beats and node.seq == 11 and node.routes_epoch == 3


CMDS = ["status", "lease", "fail", "rebalance", "drain", "undrain", "move", "operation", "nope", 7, None]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(CMDS), fields=st.dictionaries(
    st.sampled_from(["node", "what", "id", "buckets", "to_pair", "holder", "term", "lease_ms", "control", "seq",
                     "x"]), json_values, max_size=5), raw=st.binary(max_size=40), as_raw=st.booleans())
def test_any_control_request_gets_an_answer_never_a_crash(controller, cmd, fields, raw, as_raw):
    payload = raw if as_raw else orjson.dumps({"cmd": cmd, **fields})
    reply = controller.control._dispatch(payload)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and reply["error"]


@settings(max_examples=200, deadline=None)
@given(request=st.dictionaries(st.sampled_from(["holder", "term", "lease_ms", "control", "seq", "controller"]),
                               json_values, max_size=6))
def test_lease_and_fencing_take_only_well_formed_requests(request):
    voter = LeaseVoter()
    try:
        reply = serve_request(voter, request, 0.0)
        assert isinstance(reply["granted"], bool)
    except ValueError:
        assert voter.grant.holder is None    # refused whole: nothing granted
    try:
        fenced(voter, request, "fuzz")
    except ValueError:
        pass
