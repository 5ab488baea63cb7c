"""A worker's input from other nodes: a ZeroMQ PULL read like one of its rings.

Other nodes' io processes send the packets they route to this worker as
PACKETS messages (``deft.runtime.wire``) to a PULL bound at ``[node] fabric``
port + the worker's index. The worker takes input only while its output buffer
has room (the paper's step 1), so this reads one message at a time into a
buffer and hands it out with the ring interface (``peek``/``release``): what
the worker does not take stays in the buffer, and the next message stays in
the socket, where ZeroMQ's high-water mark pushes back on the sender (its
stamping unit then holds the packets unstamped, as for a full local ring).

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
    def __init__(self, ctx: zmq.Context, endpoint: str, n_instances: int, log):
        self.sock = make_socket(ctx, zmq.PULL, bind=endpoint, hwm=HWM)
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
        return 1 if self.sock.stale and readable(self.sock) else 0

    def peek(self, max_n: int) -> np.ndarray:
        if self.pos == self.n:
            self._fill()
        return self.buf[self.pos: self.pos + min(max_n, self.n - self.pos)]

    def release(self, n: int) -> None:
        self.pos += n

    def _fill(self) -> None:
        """The next good message into the buffer (bad ones are counted and skipped)."""
        self.pos = self.n = 0
        # Not stale: found empty since it was last read, and what came since makes its descriptor
        # signal: the worker's wait set wakes for it (asking costs two system calls in libzmq)
        while self.sock.stale and readable(self.sock):   # cheaper than a recv raising zmq.Again
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

    def close(self) -> None:
        self.sock.close(linger=0)
