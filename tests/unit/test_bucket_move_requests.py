"""Bad input on a bucket move's surfaces gets a clear error or a refusal, never a crash: the
supervisor's ``{"cmd": "move"}`` (any JSON), the payload files (any bytes), the controller's
``{"cmd": "move"}``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.worker import bucketmove
from deft.runtime.worker.bucketmove import BAD_REQUEST, pack, serve, unpack

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=12)


class FakeBox:
    """Answers every request at once with a status (or nothing)."""

    def __init__(self, status=None):
        self.status, self.seq, self.move = status, 0, 0

    def ask(self, **request):
        self.seq, self.move = self.seq + 1, request["move"]
        return self.seq

    def answer(self, seq):
        return None if self.status is None else (self.status, self.move)


@settings(max_examples=300, deadline=None)
@given(request=st.dictionaries(st.sampled_from(["op", "move", "pair", "epoch", "buckets", "payload", "instance"]),
                               json_values, max_size=7))
def test_any_move_request_is_answered_or_refused_with_a_clear_error(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("mv")
    try:
        reply = serve(request, FakeBox(), (str(d / "req"), str(d / "ack")), lambda: None)
    except ValueError as exc:
        assert str(exc)                                  # names what was wrong
        return
    assert reply["done"] is False and reply["retry"] is True   # no answer from the (fake) worker


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_payload_bytes_are_read_or_named_unreadable(data):
    try:
        unpack(data, ("buckets",))
    except ValueError as exc:
        assert "move payload" in str(exc)


def test_a_worker_refusal_is_passed_on_with_its_reason(tmp_path):
    req = {"op": "hold", "move": 1, "pair": 0, "epoch": 0, "buckets": [1, 2]}
    reply = serve(req, FakeBox(BAD_REQUEST), (str(tmp_path / "req"), str(tmp_path / "ack")), lambda: None)
    assert reply == {"done": False, "reason": "bad request", "retry": False}
    with pytest.raises(ValueError, match="payload"):
        serve(dict(req, op="import", payload="not base64!"), FakeBox(), (str(tmp_path / "r"), str(tmp_path / "a")),
              lambda: None)
    good = pack(records=np.zeros(0), flows=np.zeros(0, np.uint64), nexts=np.zeros(0, np.uint64))
    assert bucketmove.unpack(good, ("records", "flows", "nexts"))["flows"].dtype == np.uint64


class FakeController:
    """What ``Controller.move`` looks at: a placed assignment and the operations."""

    def __init__(self):
        import logging

        from deft.runtime.controller.operations import Operations
        from deft.runtime.controller.placement import Assignment

        self.assignment = Assignment(64)
        self.assignment.place({"n1": 2, "n2": 2})
        self.operations = Operations(self, lambda *a: None, logging.getLogger("test"))


@settings(max_examples=300, deadline=None)
@given(request=st.dictionaries(st.sampled_from(["buckets", "to_pair", "cmd"]), json_values, max_size=3))
def test_the_controllers_move_refuses_bad_buckets_or_pairs_by_name(request):
    from deft.runtime.controller.main import Controller

    try:
        op = Controller.move(FakeController(), request)
    except ValueError as exc:
        assert "buckets" in str(exc) or "to_pair" in str(exc)
        return
    assert op["kind"] == "move" and op["state"] == "running"
