"""Flow rules: bucket -> NF instance, in shared memory the supervisor owns.

Layout: int64 words [epoch, n_buckets, instance of bucket 0, 1, ...]. The
stamping units read it per batch (one fancy index); the supervisor (later the
controller, through it) rewrites entries and bumps the epoch, so a move of a
bucket is visible to the switch at the next batch.
"""

from __future__ import annotations

import numpy as np

from deft.runtime.ring.shm import attach_segment, create_segment, unlink_segment


class FlowRules:
    def __init__(self, name: str, mm, owner: bool):
        self.name = name
        self._mm = mm
        self._owner = owner
        words = np.ndarray((len(mm) // 8,), dtype=np.int64, buffer=mm)
        self._words = words
        self.n_buckets = int(words[1])
        self.instance_of = words[2: 2 + self.n_buckets]

    @classmethod
    def create(cls, name: str, n_buckets: int, n_instances: int) -> "FlowRules":
        mm = create_segment(name, 8 * (2 + n_buckets))
        words = np.ndarray((2 + n_buckets,), dtype=np.int64, buffer=mm)
        words[1] = n_buckets
        words[2:] = np.arange(n_buckets) % n_instances  # spread buckets evenly at start
        words[0] = 1
        del words
        return cls(name, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> "FlowRules":
        return cls(name, attach_segment(name), owner=False)

    @property
    def epoch(self) -> int:
        return int(self._words[0])

    def move_bucket(self, bucket: int, instance: int) -> int:
        self.instance_of[bucket] = instance
        self._words[0] += 1
        return self.epoch

    def close(self) -> None:
        self.instance_of = None  # type: ignore[assignment]
        self._words = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass
        if self._owner:
            unlink_segment(self.name)
