"""A worker's input from other nodes: a ZeroMQ PULL read like one of its rings.

Other nodes' io processes send the packets they route to this worker as
PACKETS messages (``deft.runtime.wire``) to a PULL bound at ``[node] fabric``
port + the worker's index. The worker takes input only while its output buffer
has room (the paper's step 1), so this reads one message at a time into a
buffer and hands it out with the ring interface (``peek``/``release``): what
the worker does not take stays in the buffer, and the next message stays in
the socket, where ZeroMQ's high-water mark pushes back on the sender (its
stamping unit then holds the packets unstamped, as for a full local ring).

The same reader takes the copies other nodes' io send for the pairs the worker
is the secondary of (``[node] copies`` port + index), with ``watched=False``: the
worker drains that socket every round but sleeps on it only while a Prepare
waits for copies (``Worker.wait``), so it asks the socket each time instead of
trusting the wait set to have seen it.

A malformed message is counted (``bad_frames``) and dropped, never raised.
"""

from __future__ import annotations

import numpy as np
import zmq

from deft.runtime import wire
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.errors import WireError
from deft.runtime.sockets import make_socket, readable

MAX_MESSAGE = 4096   # records per message: a sender's batch is at most 256
HWM = 64             # messages queued here before the senders wait


class RemoteInput:
    def __init__(self, ctx: zmq.Context, endpoint: str, n_instances: int, log, *, hwm: int = HWM,
                 watched: bool = True):
        self.sock = make_socket(ctx, zmq.PULL, bind=endpoint, hwm=hwm)
        self.watched = watched   # always in the worker's wait set: a socket found empty since is signalled
        self.sock.maxmsgsize = MAX_MESSAGE * PACKET_DTYPE.itemsize + 4096
        self.endpoint = endpoint
        self.n_instances = n_instances
        self.log = log
        self.buf = np.zeros(MAX_MESSAGE, dtype=PACKET_DTYPE)
        self.pos = self.n = 0
        self.messages = self.packets = self.bad_frames = 0

    @property
    def buffered(self) -> int:
        return self.n - self.pos

    def __len__(self) -> int:
        """Packets ready now: what is buffered, else 1 if a message waits in the socket."""
        if self.pos < self.n:
            return self.n - self.pos
        return 1 if self._maybe() and readable(self.sock) else 0

    def peek(self, max_n: int) -> np.ndarray:
        if self.pos == self.n:
            self._fill()
        return self.buf[self.pos: self.pos + min(max_n, self.n - self.pos)]

    def release(self, n: int) -> None:
        self.pos += n

    def _fill(self) -> None:
        """The next good message into the buffer (bad ones are counted and skipped)."""
        self.pos = self.n = 0
        while self._maybe() and readable(self.sock):   # cheaper than a recv raising zmq.Again
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header, n = wire.decode_packets(frames, self.n_instances, self.buf)
            except WireError as exc:
                self.bad_frames += 1
                if self.bad_frames <= 10:
                    self.log.warning("ignored a bad message on %s: %s", self.endpoint, exc)
                continue
            self.n = n
            self.messages += 1
            self.packets += n
            return

    def _maybe(self) -> bool:
        """Worth asking: not known empty. Watched and not stale, it was found empty since it was last
        read, and anything that came since makes its descriptor signal: the wait set wakes the worker
        for it (an ask costs two system calls inside libzmq)."""
        return self.sock.stale or not self.watched

    def close(self) -> None:
        self.sock.close(linger=0)
