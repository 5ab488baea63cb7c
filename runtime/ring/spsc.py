"""Single-producer single-consumer ring of fixed-size records in shared memory.

One process pushes, one process pops; records are a numpy structured dtype.
Batches move whole: ``push_some`` copies up to the free room in at most two
slices (at the wrap); ``peek`` hands the consumer a *view* of the next
contiguous records, which it processes in place and then ``release``s, so a
record is copied once on its way through a ring.

Non-blocking calls raise ``RingFull``/``RingEmpty`` (``*_nowait``) or return
counts; blocking is done outside the ring with a ``Doorbell`` (a POSIX
semaphore the consumer sleeps on and producers ring after a push), so an idle
consumer sleeps instead of spinning a core.
"""

from __future__ import annotations

import mmap

import numpy as np
import posix_ipc

from deft.runtime.dataplane.packet import copy_records
from deft.runtime.errors import RingEmpty, RingError, RingFull
from deft.runtime.ring import layout
from deft.runtime.ring.shm import (
    attach_segment,
    attach_semaphore,
    create_segment,
    create_semaphore,
    release_segment,
    unlink_semaphore,
)


class Ring:
    """A view of one ring segment; make it with ``Ring.create`` or ``Ring.attach``."""

    def __init__(self, name: str, mm: mmap.mmap, dtype: np.dtype, owner: bool):
        self.name = name
        self.dtype = np.dtype(dtype)
        self._mm = mm
        self._owner = owner
        words = memoryview(mm)[: layout.HEADER_BYTES].cast("Q")
        if words[layout.W_MAGIC] != layout.RING_MAGIC:
            words.release()
            raise RingError(f"{name}: not a DEFT ring (bad magic)")
        if words[layout.W_VERSION] != layout.LAYOUT_VERSION:
            raise RingError(f"{name}: layout version {words[layout.W_VERSION]}, expected {layout.LAYOUT_VERSION}")
        if words[layout.W_SLOT_SIZE] != self.dtype.itemsize:
            raise RingError(
                f"{name}: slot size {words[layout.W_SLOT_SIZE]} does not match dtype size {self.dtype.itemsize}"
            )
        self._words = words  # Python ints on index: cheaper than numpy scalars on the hot path
        self.n_slots = int(words[layout.W_N_SLOTS])
        self._mask = self.n_slots - 1
        self.slots = np.ndarray((self.n_slots,), dtype=self.dtype, buffer=mm, offset=layout.HEADER_BYTES)

    # -- life cycle -------------------------------------------------------
    @classmethod
    def create(cls, name: str, dtype: np.dtype, n_slots: int) -> "Ring":
        layout.check_power_of_two(n_slots)
        dtype = np.dtype(dtype)
        mm = create_segment(name, layout.ring_bytes(dtype.itemsize, n_slots))
        words = memoryview(mm)[: layout.HEADER_BYTES].cast("Q")
        words[layout.W_VERSION] = layout.LAYOUT_VERSION
        words[layout.W_SLOT_SIZE] = dtype.itemsize
        words[layout.W_N_SLOTS] = n_slots
        words[layout.W_MAGIC] = layout.RING_MAGIC  # last: a reader never sees a half-made header
        words.release()
        return cls(name, mm, dtype, owner=True)

    @classmethod
    def attach(cls, name: str, dtype: np.dtype) -> "Ring":
        return cls(name, attach_segment(name), dtype, owner=False)

    def close(self) -> None:
        """Unmap (and unlink, if this side created it). Views from ``peek`` must be dropped first."""
        self.slots = None  # type: ignore[assignment]
        if self._words is not None:
            self._words.release()
            self._words = None  # type: ignore[assignment]
        release_segment(self._mm, self.name, self._owner)

    # -- state --------------------------------------------------------------
    def __len__(self) -> int:
        w = self._words
        # head first: read after the tail, a consumer's pop past that tail made the length negative in a
        # third process (the supervisor's beat; it killed the beat thread). Producer and consumer see
        # what they did before either way; a third process asks ``occupancy``
        head = w[layout.W_HEAD]
        return w[layout.W_TAIL] - head

    def occupancy(self) -> int:
        """``len`` for a process that neither pushes nor pops (status, beats, metrics): between its two
        reads both sides may move, so it may see more than the ring holds (or, on a CPU that reorders
        loads, anything); bounded to [0, n_slots]. Kept off ``len``, which the data path calls per round."""
        return max(0, min(len(self), self.n_slots))

    def free(self) -> int:
        return self.n_slots - len(self)

    @property
    def pushed(self) -> int:
        return self._words[layout.W_TAIL]

    @property
    def popped(self) -> int:
        return self._words[layout.W_HEAD]

    # -- producer side ------------------------------------------------------
    def push_some(self, records: np.ndarray, index: np.ndarray | None = None) -> int:
        """Copy as many of ``records`` (or of ``records[index]``) as fit; return how many."""
        w = self._words
        tail = w[layout.W_TAIL]
        total = len(records) if index is None else len(index)
        n = min(total, self.n_slots - (tail - w[layout.W_HEAD]))
        if n <= 0:
            return 0
        self._write_at(tail, records, index, n)
        w[layout.W_TAIL] = tail + n  # publish after the data is in place
        return n

    def stage(self, records: np.ndarray, index: np.ndarray | None = None) -> int | None:
        """Write all of ``records`` (or ``records[index]``) past the tail WITHOUT publishing them.

        Returns the tail position that would publish them (see ``publish_to``),
        or None when they do not all fit. The consumer sees nothing until then:
        a batch staged here can be released later by whoever owns the ring,
        even if this producer dies in between (the commit record names the position).
        """
        w = self._words
        tail = int(w[layout.W_TAIL])
        n = len(records) if index is None else len(index)
        if n > self.n_slots - (tail - int(w[layout.W_HEAD])):
            return None
        self._write_at(tail, records, index, n)
        return tail + n

    def _write_at(self, tail: int, records: np.ndarray, index: np.ndarray | None, n: int) -> None:
        """The first ``n`` of ``records`` (or of ``records[index]``) into the slots from ``tail``, wrapping once."""
        start = tail & self._mask
        first = min(n, self.n_slots - start)
        if index is None:
            copy_records(self.slots[start: start + first], records[:first])
            if first < n:
                copy_records(self.slots[: n - first], records[first:n])
        else:
            copy_records(self.slots[start: start + first], records, index[:first])
            if first < n:
                copy_records(self.slots[: n - first], records, index[first:n])

    def publish_to(self, position: int) -> bool:
        """Make everything staged up to ``position`` visible; False if it already was (or is beyond reach)."""
        w = self._words
        tail = int(w[layout.W_TAIL])
        if not tail < position <= int(w[layout.W_HEAD]) + self.n_slots:
            return False
        w[layout.W_TAIL] = position
        return True

    def push_nowait(self, records: np.ndarray) -> None:
        """Push the whole batch or nothing (RingFull)."""
        if len(records) > self.free():
            raise RingFull(f"{self.name}: {len(records)} records, room for {self.free()}")
        self.push_some(records)

    # -- consumer side --------------------------------------------------------
    def peek(self, max_n: int) -> np.ndarray:
        """View of up to ``max_n`` next records (contiguous, so it may stop at the wrap).

        The view stays valid until ``release``; process in place, then release.
        """
        w = self._words
        head = w[layout.W_HEAD]
        n = min(max_n, w[layout.W_TAIL] - head)
        if n <= 0:
            return self.slots[:0]
        start = head & self._mask
        return self.slots[start: start + min(n, self.n_slots - start)]

    def release(self, n: int) -> None:
        """Give back ``n`` records seen through ``peek``."""
        w = self._words
        head = w[layout.W_HEAD]
        if n < 0 or head + n > w[layout.W_TAIL]:
            raise RingError(f"{self.name}: release({n}) beyond what was pushed")
        w[layout.W_HEAD] = head + n

    def pop(self, max_n: int) -> np.ndarray:
        """Copy out up to ``max_n`` records (both sides of the wrap); may be empty."""
        parts = []
        remaining = max_n
        while remaining > 0:
            view = self.peek(remaining)
            if len(view) == 0:
                break
            parts.append(view.copy())
            self.release(len(view))
            remaining -= len(view)
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def pop_nowait(self, max_n: int) -> np.ndarray:
        out = self.pop(max_n)
        if len(out) == 0:
            raise RingEmpty(self.name)
        return out


class Doorbell:
    """A wake-up for one consumer that sleeps on several rings.

    Producers call ``ring()`` after every push; glibc's sem_post is a user-space
    atomic increment unless someone sleeps, so it costs next to nothing while
    the consumer is busy. The consumer calls ``wait(timeout)`` only after it
    found all its rings empty; a stale count just makes one loop find nothing.
    """

    def __init__(self, name: str, sem: posix_ipc.Semaphore, owner: bool):
        self.name = name
        self._sem = sem
        self._owner = owner

    @classmethod
    def create(cls, name: str) -> "Doorbell":
        return cls(name, create_semaphore(name), owner=True)

    @classmethod
    def attach(cls, name: str) -> "Doorbell":
        return cls(name, attach_semaphore(name), owner=False)

    def ring(self) -> None:
        if self._sem.value < 2:  # a sleeping consumer needs one post; more is noise
            self._sem.release()

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; True if rung."""
        try:
            self._sem.acquire(timeout)
            return True
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return False  # timed out, or a signal (SIGTERM) woke us: the caller re-checks its stop flag

    def close(self) -> None:
        self._sem.close()
        if self._owner:
            unlink_semaphore(self.name)
