"""Shared-memory ring layout: a 256-byte header, then ``n_slots`` fixed-size slots.

Header (little-endian u64 words):
  word 0   magic  (RING_MAGIC)
  word 1   layout version
  word 2   slot size in bytes
  word 3   number of slots (a power of two)
  word 8   head: records ever popped   (written only by the consumer)
  word 16  tail: records ever pushed   (written only by the producer)

head and tail are monotonic counters, never wrapped: occupancy is
``tail - head`` and full is ``tail - head == n_slots``, so full and empty never
look alike (bslatkin/ringbuffer's counter + generation idea). A slot's index is
``counter & (n_slots - 1)``. head and tail live on different cache lines so the
two sides do not bounce one line between cores.

Memory ordering: the producer writes the slots, then the tail; the consumer
reads the tail, then the slots. On x86-64 (TSO) stores are not reordered with
stores nor loads with loads, and each counter update is one aligned 8-byte
store, which is what makes this safe without explicit fences.
"""

RING_MAGIC = 0xDEF7_0000_0000_0001
LAYOUT_VERSION = 1
HEADER_BYTES = 256

W_MAGIC = 0
W_VERSION = 1
W_SLOT_SIZE = 2
W_N_SLOTS = 3
W_HEAD = 8
W_TAIL = 16


def ring_bytes(slot_size: int, n_slots: int) -> int:
    return HEADER_BYTES + slot_size * n_slots


def check_power_of_two(n: int) -> None:
    if n <= 0 or n & (n - 1):
        raise ValueError(f"ring slots must be a power of two, got {n}")
