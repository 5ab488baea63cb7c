"""The autoscaler: a pair busy over a threshold for a while gives its hottest buckets to the coolest pair.

Pure: ``tick(now_ms, busy)`` with each pair's busy fraction (``controller/load.py``: its share of
its primary worker's busy time) says whether to move now and from which pair to which, and
``pick_buckets`` which of the hot pair's buckets (by the ingress nodes' recent packets per bucket)
so that about half the difference moves. The controller carries the move out as a ``move``
operation (``bucketmove.py``: no loss, no reordering).

Hysteresis, so that steady noisy load moves nothing:

* ``dwell_ms``: a pair must stay over ``high`` that long (every sample), not just cross it;
* ``min_gain``: the coolest pair must be that much less busy, or moving only swaps the hot spot;
* ``cooldown_ms`` after a move (its effect shows in the load first), and nothing while any
  operation runs;
* the move takes half the difference, never the whole pair, so two pairs do not trade places.

With no pair to give load to (every pair over ``high`` for ``dwell_ms``), ``node_wanted`` says so:
status and the ``deft_autoscale_node_wanted`` metric tell the operator a node would help.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AutoscaleConfig:
    enabled: bool = False
    high: float = 0.7            # a pair this busy (fraction of its primary's time) is hot
    dwell_ms: float = 2000.0
    cooldown_ms: float = 10_000.0
    min_gain: float = 0.2


@dataclasses.dataclass(frozen=True)
class Plan:
    source: int
    to: int
    share: float        # the fraction of the source's load to move


class Autoscaler:
    def __init__(self, cfg: AutoscaleConfig):
        self.cfg = cfg
        self.hot_since: dict[int, float] = {}
        self.cooldown_until = 0.0
        self.node_wanted = False
        self.moves = 0
        self.last: dict | None = None      # the last move started: when, what, why

    def tick(self, now_ms: float, busy: dict[int, float], operation_running: bool = False) -> Plan | None:
        cfg = self.cfg
        for pair, b in busy.items():
            if b > cfg.high:
                self.hot_since.setdefault(pair, now_ms)
            else:
                self.hot_since.pop(pair, None)
        for pair in [p for p in self.hot_since if p not in busy]:
            del self.hot_since[pair]
        dwelt = [p for p, t in self.hot_since.items() if now_ms - t >= cfg.dwell_ms]
        self.node_wanted = bool(busy) and len(dwelt) == len(busy)
        if not cfg.enabled or not dwelt or operation_running or now_ms < self.cooldown_until or len(busy) < 2:
            return None
        source = max(dwelt, key=lambda p: (busy[p], -p))
        to = min((p for p in busy if p != source), key=lambda p: (busy[p], p))
        gain = busy[source] - busy[to]
        if gain < cfg.min_gain:
            return None
        return Plan(source, to, min(0.5, gain / 2 / busy[source]))

    def started(self, now_ms: float, plan: Plan, buckets: list[int], busy: dict[int, float]) -> None:
        """A move for ``plan`` started: cool down, and judge every pair afresh after it."""
        self.cooldown_until = now_ms + self.cfg.cooldown_ms
        self.hot_since.clear()
        self.moves += 1
        self.last = {"t_ms": round(now_ms, 3), "from_pair": plan.source, "to_pair": plan.to,
                     "buckets": len(buckets), "busy_from": round(busy[plan.source], 3),
                     "busy_to": round(busy[plan.to], 3)}

    def status(self) -> dict:
        return {"enabled": self.cfg.enabled, "high": self.cfg.high, "hot_pairs": sorted(self.hot_since),
                "node_wanted": self.node_wanted, "moves": self.moves, "last_move": self.last}


def pick_buckets(plan: Plan, buckets_of_source: list[int], rate: dict[int, float]) -> list[int]:
    """The source's hottest buckets whose packets add up to about ``plan.share`` of its own, never
    overshooting by half (a bucket too hot for that is left: moving it would only move the hot
    spot); at least one, never all. Without rates (no ingress answered) the same share by count."""
    n = len(buckets_of_source)
    if n < 2:
        return []
    total = sum(rate.get(b, 0.0) for b in buckets_of_source)
    if total <= 0:
        k = max(1, int(n * plan.share))
        return sorted(buckets_of_source)[:min(k, n - 1)]
    target = plan.share * total
    live = sorted((b for b in buckets_of_source if rate.get(b, 0.0) > 0), key=lambda b: (-rate[b], b))
    picked, moved = [], 0.0
    for b in live:
        if moved + rate[b] > 1.5 * target:
            continue
        picked.append(b)
        moved += rate[b]
        if moved >= target or len(picked) == n - 1:
            break
    if not picked:   # every bucket alone is too hot: the least hot still helps a little
        picked = [live[-1]]
    return sorted(picked)
