"""The supervisor's beat thread outlives a beat it cannot build (a dead beat thread is a live node the
controller fails over), and says how late each beat went (what tells a late sender from a lost beat)."""

from __future__ import annotations

import contextlib
import logging
import time
import types

import zmq

from deft.runtime import wire
from deft.runtime.node.heartbeat import Heartbeats


def empty_beat(seq: int) -> dict:
    return {"node": "n", "pid": 1, "seq": seq, "control": "", "fabric": "", "replication": "",
            "buckets": 1, "routes_epoch": 0, "instances": []}


class Flaky(Heartbeats):
    """Beats about nothing; the first one cannot be built."""

    def update(self) -> None:
        self._instances = []

    def _beat(self) -> dict:
        self.seq += 1
        if self.seq == 1:
            raise ValueError("__len__() should return >= 0")
        return empty_beat(self.seq)


class Sleepy(Flaky):
    """Beats about nothing; building each takes two intervals (a thread that waited for a core)."""

    def _beat(self) -> dict:
        self.seq += 1
        time.sleep(0.012)
        return empty_beat(self.seq)


@contextlib.contextmanager
def beating(kind: type[Heartbeats]):
    """A controller's SUB and ``kind`` beating to it every 5 ms."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    node = types.SimpleNamespace(heartbeat_ms=5, controller=[f"tcp://127.0.0.1:{port}"])
    sup = types.SimpleNamespace(config=types.SimpleNamespace(node=node), zctx=ctx, log=logging.getLogger("t"))
    beats = kind(sup)
    try:
        yield sub, beats
    finally:
        beats.close()
        sub.close()
        ctx.term()


def test_a_beat_that_cannot_be_built_is_skipped_and_the_next_goes_out():
    with beating(Flaky) as (sub, beats):
        assert sub.poll(5000), "no beat after a beat that could not be built: the thread died"
        kind, header = wire.decode(sub.recv_multipart())
        assert kind == wire.HEARTBEAT and header["seq"] >= 2 and beats.bad_beats == 1
        assert beats._thread.is_alive()


def test_a_late_beat_is_counted_and_says_how_late_it_went():
    with beating(Sleepy) as (sub, beats):
        lates = []
        deadline = time.monotonic() + 5
        while len(lates) < 4 and time.monotonic() < deadline:
            if sub.poll(100):
                lates.append(wire.decode(sub.recv_multipart())[1]["late_ms"])
        # each beat is built 12 ms after its time came, so the next is due 5 ms after that and goes
        # about 7 ms late; the schedule restarts from each beat (no backlog of beats to catch up)
        assert len(lates) == 4 and all(0 <= late < 1000 for late in lates)
        assert beats.late >= 2 and beats.late_max_ms >= 5
