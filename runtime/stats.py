"""Counters in shared memory: each process writes its own block, anyone may read.

A block is a JSON list of field names (padded to 4 KiB) followed by one int64
per field. The writer adds to its counters once per batch; the supervisor
reads every block to answer ``deft-ctl status`` without asking the workers, so
status works even while a worker is stuck or restarting.
"""

from __future__ import annotations

import mmap

import numpy as np
import orjson

from deft.runtime.errors import RingError
from deft.runtime.ring.shm import attach_segment, create_segment, release_segment

_NAMES_BYTES = 4096


class CounterBlock:
    def __init__(self, name: str, mm: mmap.mmap, owner: bool):
        self.name = name
        self._mm = mm
        self._owner = owner
        raw = bytes(mm[:_NAMES_BYTES]).rstrip(b"\x00")
        try:
            self.fields: list[str] = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RingError(f"{name}: not a counter block") from exc
        self.index = {f: i for i, f in enumerate(self.fields)}
        self.values = np.ndarray((len(self.fields),), dtype=np.int64, buffer=mm, offset=_NAMES_BYTES)

    @classmethod
    def create(cls, name: str, fields: list[str]) -> "CounterBlock":
        names = orjson.dumps(list(fields))
        if len(names) >= _NAMES_BYTES:
            raise RingError(f"{name}: too many counter names")
        mm = create_segment(name, _NAMES_BYTES + 8 * max(len(fields), 1))
        mm[: len(names)] = names
        return cls(name, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> "CounterBlock":
        return cls(name, attach_segment(name), owner=False)

    def add(self, field: str, n: int = 1) -> None:
        self.values[self.index[field]] += n

    def set(self, field: str, n: int) -> None:
        self.values[self.index[field]] = n

    def get(self, field: str) -> int:
        return int(self.values[self.index[field]])

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.fields, self.values.tolist()))

    def close(self) -> None:
        self.values = None  # type: ignore[assignment]
        release_segment(self._mm, self.name, self._owner)
