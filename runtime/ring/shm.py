"""POSIX shared memory and semaphores with DEFT's naming and clean-up rules.

Every name is ``/deft.<node_id>.<what>``. The supervisor is the one process
that creates segments; on start it removes whatever a crashed predecessor with
the same node id left behind (``cleanup_node``), and on exit it unlinks what it
made. Other processes only attach.
"""

from __future__ import annotations

import mmap
import os
import re

import posix_ipc

from deft.runtime.errors import RingError

SHM_DIR = "/dev/shm"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def shm_name(node_id: str, what: str) -> str:
    name = f"deft.{node_id}.{what}"
    if not _SAFE.match(name) or len(name) > 200:
        raise RingError(f"unusable shared-memory name {name!r} (letters, digits, '_', '.', '-' only)")
    return "/" + name


# Mapped with every page in place: a page touched for the first time on the data path costs a fault
# (and, for the creator's first touch, zeroing it): about 4 % of a worker's CPU while its rings made
# their first lap in a benchmark's first 40,000 packets.
_POPULATE = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def create_segment(name: str, size: int) -> mmap.mmap:
    """Create (replacing any stale one) and map a zero-filled segment, its memory allocated now.

    Allocated now, a shortage of /dev/shm is this error at start, not a SIGBUS in whichever process
    first touches a page the filesystem cannot supply, in the middle of traffic.
    """
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size)
    except (posix_ipc.Error, OSError) as exc:
        raise RingError(f"cannot create shared memory {name}: {exc}") from exc
    try:
        try:
            os.posix_fallocate(shm.fd, 0, size)
        except OSError as exc:
            unlink_segment(name)
            raise RingError(f"cannot allocate {size} bytes of shared memory for {name} in {SHM_DIR}: "
                            f"{exc.strerror or exc}") from exc
        return mmap.mmap(shm.fd, size, flags=_POPULATE)
    finally:
        shm.close_fd()


def attach_segment(name: str) -> mmap.mmap:
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError as exc:
        raise RingError(f"shared memory {name} does not exist (is the supervisor running?)") from exc
    try:
        return mmap.mmap(shm.fd, shm.size, flags=_POPULATE)
    finally:
        shm.close_fd()


def release_segment(mm: mmap.mmap, name: str, unlink: bool) -> None:
    """Unmap a segment (and unlink it, for its creator).

    A numpy view someone still holds keeps the mapping alive (BufferError);
    it then goes with the process, and the unlink still removes the name.
    """
    try:
        mm.close()
    except BufferError:
        pass
    if unlink:
        unlink_segment(name)


def unlink_segment(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def create_semaphore(name: str) -> posix_ipc.Semaphore:
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass
    return posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=0)


def attach_semaphore(name: str) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name)
    except posix_ipc.ExistentialError as exc:
        raise RingError(f"semaphore {name} does not exist (is the supervisor running?)") from exc


def unlink_semaphore(name: str) -> None:
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass


def leftovers(node_id: str) -> list[str]:
    """Names in /dev/shm that belong to ``node_id`` (segments and semaphores)."""
    prefix = f"deft.{node_id}."
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(prefix) or e.startswith("sem." + prefix))


def cleanup_node(node_id: str) -> list[str]:
    """Remove every segment and semaphore of ``node_id``; return what was removed."""
    removed = leftovers(node_id)
    for entry in removed:
        if entry.startswith("sem."):
            unlink_semaphore("/" + entry[4:])
        else:
            unlink_segment("/" + entry)
    return removed
