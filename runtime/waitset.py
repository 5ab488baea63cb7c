"""Sleep on ZeroMQ sockets and plain file descriptors with as few system calls as ZeroMQ allows.

``zmq.Poller`` (``zmq_poll``) asks every socket for ``ZMQ_EVENTS`` before it sleeps and again
after it wakes, and each ask is a ``poll(2)`` and a ``getpid(2)`` inside libzmq (the socket's
mailbox, checked for a fork): with four sockets about 18 system calls per sleep. A worker made
13 ``poll`` and 14 ``getpid`` calls per round at 200 pps (``strace -c``), a round being a few
hundred microseconds of CPU on this machine.

A socket's ``ZMQ_FD`` is edge-triggered: it becomes readable when commands reach the socket's
mailbox, and any send, receive or ``ZMQ_EVENTS`` may process them, after which messages can
wait in the socket with nothing left to signal. So a socket needs ``ZMQ_EVENTS`` asked before a
sleep only if it was used since that last said "nothing to read" (``sockets.Socket.stale``: set
by every send and receive, cleared by ``sockets.readable`` when it finds nothing). Everything
else sleeps in one ``poll(2)`` on the descriptors, and only the sockets whose descriptor fired
are asked after it.
"""

from __future__ import annotations

import select
import time

import zmq

from deft.runtime.sockets import Socket, readable

_IN = select.POLLIN


class WaitSet:
    """Sockets and descriptors to sleep on; ``wait`` returns those with something to read."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._socks: dict[int, zmq.Socket] = {}   # ZMQ_FD -> socket
        self._fd_of: dict[zmq.Socket, int] = {}
        self._untracked: set[int] = set()         # sockets whose use nothing records: asked every time
        self._off: set[int] = set()               # registered but not watched now (``watch``)

    def add(self, item: zmq.Socket | int) -> None:
        """A descriptor, or a socket (one not made by ``sockets.make_socket``, e.g. a monitor, is
        asked before every sleep: nothing tells when it was used)."""
        if isinstance(item, int):
            self._poll.register(item, _IN)
        else:
            fd = self._fd_of[item] = item.get(zmq.FD)
            self._socks[fd] = item
            if not isinstance(item, Socket):
                self._untracked.add(fd)
            self._poll.register(fd, _IN)

    def remove(self, item: zmq.Socket | int) -> None:
        fd = item if isinstance(item, int) else self._fd_of.pop(item)
        self._socks.pop(fd, None)
        self._untracked.discard(fd)
        if fd in self._off:
            self._off.discard(fd)
        else:
            self._poll.unregister(fd)

    def watch(self, sock: zmq.Socket, on: bool) -> None:
        """Wake for ``sock`` or not (a socket whose messages the owner cannot take now); saying the same
        again costs nothing."""
        fd = self._fd_of[sock]
        if on and fd in self._off:
            self._off.discard(fd)
            self._poll.register(fd, _IN)
        elif not on and fd not in self._off:
            self._off.add(fd)
            self._poll.unregister(fd)

    def wait(self, timeout_ms: int) -> tuple[set, set]:
        """Sleep up to ``timeout_ms`` (0: look only) for a socket with a message or a readable
        descriptor; the sockets and descriptors that have something."""
        socks: set = set()
        for fd, sock in self._socks.items():
            if fd not in self._off and (fd in self._untracked or sock.stale) and readable(sock):
                socks.add(sock)
        deadline = time.monotonic_ns() + timeout_ms * 1_000_000
        while True:
            events = self._poll.poll(0 if socks else timeout_ms)
            fds: set = set()
            for fd, _ in events:
                sock = self._socks.get(fd)
                if sock is None:
                    fds.add(fd)
                elif readable(sock):   # the descriptor only says "look": commands, maybe no message
                    socks.add(sock)
            if socks or fds or not events:
                return socks, fds
            # only commands that brought no message (a peer connected, room to send): sleep on
            timeout_ms = max(0, -(-(deadline - time.monotonic_ns()) // 1_000_000))
            if not timeout_ms:
                return socks, fds
