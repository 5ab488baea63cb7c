"""The supervisor's beat thread outlives a beat it cannot build: a dead beat thread is a live node the
controller fails over."""

from __future__ import annotations

import logging
import types

import zmq

from deft.runtime import wire
from deft.runtime.node.heartbeat import Heartbeats


class Flaky(Heartbeats):
    """Beats about nothing; the first one cannot be built."""

    def update(self) -> None:
        self._instances = []

    def _beat(self) -> dict:
        self.seq += 1
        if self.seq == 1:
            raise ValueError("__len__() should return >= 0")
        return {"node": "n", "pid": 1, "seq": self.seq, "control": "", "fabric": "", "replication": "",
                "buckets": 1, "routes_epoch": 0, "instances": []}


def test_a_beat_that_cannot_be_built_is_skipped_and_the_next_goes_out():
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    node = types.SimpleNamespace(heartbeat_ms=5, controller=[f"tcp://127.0.0.1:{port}"])
    sup = types.SimpleNamespace(config=types.SimpleNamespace(node=node), zctx=ctx, log=logging.getLogger("t"))
    beats = Flaky(sup)
    try:
        assert sub.poll(5000), "no beat after a beat that could not be built: the thread died"
        kind, header = wire.decode(sub.recv_multipart())
        assert kind == wire.HEARTBEAT and header["seq"] >= 2 and beats.bad_beats == 1
        assert beats._thread.is_alive()
    finally:
        beats.close()
        sub.close()
        ctx.term()
