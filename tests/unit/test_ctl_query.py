"""deft-ctl's query_all: one request to several nodes at once, one deadline for all."""

from __future__ import annotations

import threading
import time

import orjson
import zmq

from deft.tools.ctl import query_all


def test_query_all_answers_what_answered_and_waits_one_timeout_for_the_silent():
    ctx = zmq.Context.instance()
    answering, silent, garbage, silent2 = (ctx.socket(zmq.ROUTER) for _ in range(4))
    ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in (answering, silent, garbage, silent2)]

    def serve():
        for sock, reply in ((answering, orjson.dumps({"ok": True, "epoch": 3})), (garbage, b"not json")):
            if sock.poll(2000):
                ident, request = sock.recv_multipart()
                assert orjson.loads(request) == {"cmd": "set_routes"}
                sock.send_multipart([ident, reply])

    server = threading.Thread(target=serve)
    server.start()
    try:
        t0 = time.monotonic()
        got = query_all({f"n{k}": f"tcp://127.0.0.1:{p}" for k, p in enumerate(ports)}, {"cmd": "set_routes"}, 500)
        took = time.monotonic() - t0
    finally:
        server.join()
        for s in (answering, silent, garbage, silent2):
            s.close(0)
    assert got == {"n0": {"ok": True, "epoch": 3}, "n1": None, "n2": None, "n3": None}
    assert 0.45 < took < 0.95         # one deadline for both silent nodes (one by one: 1 s)
