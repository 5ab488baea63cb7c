"""CURVE on every socket (runtime/sockets.py, runtime/security.py): members and operators get in,
nobody else gets anything; keys are made once and never replaced; bad key directories are named."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from deft.runtime import sockets
from deft.runtime.control import ControlServer, NoAnswer, query
from deft.runtime.errors import ConfigError
from deft.runtime.security import init_keys, load_keys
from deft.runtime.sockets import make_socket, send_nowait


@pytest.fixture
def keydir(tmp_path):
    made = init_keys(tmp_path / "keys", ["node1", "node2"])
    assert len(made) == 4   # cluster, 2 members, 1 operator
    return tmp_path / "keys"


@pytest.fixture(autouse=True)
def plain_afterwards():
    yield
    sockets.use_keys(None)


def test_keys_are_made_once_with_private_secrets(keydir):
    before = (keydir / "members" / "node1.key_secret").read_bytes()
    assert init_keys(keydir, ["node1", "node3"]) == [str(keydir / "members" / "node3.key_secret")]
    assert (keydir / "members" / "node1.key_secret").read_bytes() == before
    assert stat.S_IMODE(os.stat(keydir / "members" / "node3.key_secret").st_mode) == 0o600
    keys = load_keys(keydir, "node1")
    assert len(keys.members) == 3 and len(keys.operators) == 1 and keys.server_secret is not None
    op = load_keys(keydir, "operator", operator=True)
    assert op.public in keys.operators


def test_missing_keys_are_named(tmp_path, keydir):
    with pytest.raises(ConfigError, match="no such key directory"):
        load_keys(tmp_path / "nowhere", "node1")
    with pytest.raises(ConfigError, match=r"members/node9\.key_secret: no such key"):
        load_keys(keydir, "node9")
    with pytest.raises(ConfigError, match="bad key name"):
        init_keys(keydir, ["../x"])


class Log:
    def warning(self, *a):
        pass


def served(keydir, name="node1"):
    """A control server and a data PULL socket with member ``name``'s keys, in their own context."""
    sockets.use_keys(load_keys(keydir, name))
    ctx = zmq.Context()
    control = ControlServer(ctx, "tcp://127.0.0.1:*", {"ping": lambda r: {"pong": True}}, Log())
    url = control.sock.last_endpoint.decode()
    pull = make_socket(ctx, zmq.PULL, bind="tcp://127.0.0.1:*")
    return ctx, control, url, pull


def answer_once(control, pull, timeout_ms=300):
    if control.sock.poll(timeout_ms):
        control.handle_one()
    return pull.poll(timeout_ms) and pull.recv()


def test_members_and_operators_get_in_and_strangers_get_nothing(keydir, tmp_path):
    import threading

    ctx, control, url, pull = served(keydir)
    data_url = pull.last_endpoint.decode()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if control.sock.poll(20):
                control.handle_one()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        # a member: control and data
        assert query(url, {"cmd": "ping"}, 2000)["pong"]
        push = make_socket(zmq.Context.instance(), zmq.PUSH, connect=data_url)
        push.send(b"member")
        assert pull.poll(2000) and pull.recv() == b"member"
        push.close()
        # an operator: control only
        sockets.use_keys(load_keys(keydir, "operator", operator=True))
        assert query(url, {"cmd": "ping"}, 2000)["pong"]
        push = make_socket(zmq.Context.instance(), zmq.PUSH, connect=data_url)
        send_nowait(push, [b"operator"])   # refused at the handshake: never blocking
        assert not pull.poll(500)
        push.close()
        # a plain peer, and one with keys of another cluster: nothing, not even an error
        other = init_keys(tmp_path / "other", ["node1"]) and load_keys(tmp_path / "other", "node1")
        for keys in (None, other):
            sockets.use_keys(keys)
            with pytest.raises(NoAnswer):
                query(url, {"cmd": "ping"}, 500)
            push = make_socket(zmq.Context.instance(), zmq.PUSH, connect=data_url)
            send_nowait(push, [b"stranger"])
            assert not pull.poll(300)
            push.close()
        # the operator's key on a data socket was refused by the ZAP handler (counted); the plain peer
        # and the other cluster's key never got that far (libzmq drops a failed handshake)
        assert sockets.refused(ctx) >= 1
    finally:
        stop.set()
        thread.join()
        control.close()
        pull.close()
        sockets.close_context(ctx)
