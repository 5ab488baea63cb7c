"""A doorbell that a poller can wait on together with sockets: a named FIFO in /dev/shm.

``Doorbell`` (a POSIX semaphore) is the cheapest wake-up, but a process can
only sleep on it alone. A worker that replicates also waits for 2PC messages
on ZeroMQ sockets; sleeping on the semaphore meant waking every millisecond
to look at them, a millisecond added to every 2PC round trip on each side.
``FdBell`` has the same ``ring``/``wait`` interface plus ``fileno()``, so the
worker puts ``bell.fileno()`` in its wait set (``runtime/waitset.py``) next to
its sockets and sleeps until either has something.

Both ends open the FIFO read-write and non-blocking (on Linux that never
blocks and never fails for want of the other end, so a producer can ring a
consumer that is restarting). A ring is a one-byte write; a full pipe means
the consumer has plenty of rings already. ``drain()`` empties it before the
consumer looks at its rings.
"""

from __future__ import annotations

import errno
import os
import select

from deft.runtime.errors import RingError

SHM_DIR = "/dev/shm"


class FdBell:
    def __init__(self, name: str, fd: int, owner: bool):
        self.name = name
        self._fd = fd
        self._owner = owner

    @staticmethod
    def path(name: str) -> str:
        return SHM_DIR + name  # name is "/deft.<node>.<what>", like a segment's

    @classmethod
    def create(cls, name: str) -> "FdBell":
        path = cls.path(name)
        try:
            os.unlink(path)  # a crashed predecessor's
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o600)
        return cls(name, os.open(path, os.O_RDWR | os.O_NONBLOCK), owner=True)

    @classmethod
    def attach(cls, name: str) -> "FdBell":
        try:
            return cls(name, os.open(cls.path(name), os.O_RDWR | os.O_NONBLOCK), owner=False)
        except FileNotFoundError:
            raise RingError(f"bell {name} does not exist (is the supervisor running?)") from None

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        try:
            os.write(self._fd, b"\x01")
        except BlockingIOError:
            pass  # the pipe is full of rings: the consumer will wake anyway

    def drain(self) -> None:
        """Forget the rings so far (call before looking at the rings, never after)."""
        try:
            while len(os.read(self._fd, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; True if rung (the rings are drained)."""
        try:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        except InterruptedError:
            return False
        except OSError as exc:  # a signal on an old kernel; anything else is a bug
            if exc.errno != errno.EINTR:
                raise
            return False
        if ready:
            self.drain()
        return bool(ready)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._owner:
            try:
                os.unlink(self.path(self.name))
            except FileNotFoundError:
                pass
