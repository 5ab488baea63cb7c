"""A lossy, duplicating, reordering channel for the replication simulation (seeded)."""

from __future__ import annotations

import random


class Channel:
    """In-flight items for one receiver: random delay (hence reorder), duplication, optional loss."""

    def __init__(self, rng: random.Random, drop: float, dup: float, max_delay: int) -> None:
        self.rng, self.drop, self.dup, self.max_delay = rng, drop, dup, max_delay
        self.items: list[tuple[int, object]] = []

    def put(self, now: int, item: object) -> None:
        rng = self.rng
        if rng.random() < self.drop:
            return
        self.items.append((now + rng.randint(0, self.max_delay), item))
        if rng.random() < self.dup:
            self.items.append((now + rng.randint(0, self.max_delay), item))

    def due(self, now: int) -> list[object]:
        ready = [it for at, it in self.items if at <= now]
        self.items = [(at, it) for at, it in self.items if at > now]
        self.rng.shuffle(ready)
        return ready
