"""The autoscaler (runtime/controller/autoscale.py) against scripted load traces: a pair that stays
hot gives its hottest buckets to the coolest pair; steady noisy load, short spikes, load everywhere
and a running operation move nothing; every pair hot says a node is wanted."""

from __future__ import annotations

import random

from deft.runtime.controller.autoscale import AutoscaleConfig, Autoscaler, Plan, pick_buckets

CFG = AutoscaleConfig(enabled=True, high=0.7, dwell_ms=2000, cooldown_ms=10_000, min_gain=0.2)
STEP_MS = 250.0


def run(scaler: Autoscaler, trace, seconds: float, start_ms: float = 0.0) -> list[tuple[float, Plan]]:
    """Feed ``trace(t_ms) -> {pair: busy}`` every 250 ms; the plans, each taken as started at once."""
    plans = []
    t = start_ms
    while t < start_ms + seconds * 1000:
        busy = trace(t)
        plan = scaler.tick(t, busy)
        if plan is not None:
            plans.append((t, plan))
            scaler.started(t, plan, [0], busy)
        t += STEP_MS
    return plans


def test_a_pair_that_stays_hot_moves_to_the_coolest_after_the_dwell_then_cools_down():
    scaler = Autoscaler(CFG)
    plans = run(scaler, lambda t: {0: 0.9, 1: 0.3, 2: 0.1, 3: 0.5}, 15)
    assert [(t, p.source, p.to) for t, p in plans] == [(2000.0, 0, 2), (12000.0, 0, 2)]   # dwell, then cooldown
    assert abs(plans[0][1].share - (0.9 - 0.1) / 2 / 0.9) < 1e-9
    assert scaler.status()["moves"] == 2 and scaler.status()["last_move"]["from_pair"] == 0


def test_steady_noisy_load_moves_nothing_for_a_minute():
    rng = random.Random(7)
    scaler = Autoscaler(CFG)
    # every pair about 0.5 busy, noise +-0.25: a pair crosses 0.7 now and then, never for 2 s in a row
    assert run(scaler, lambda t: {p: 0.5 + rng.uniform(-0.25, 0.25) for p in range(6)}, 60) == []


def test_short_spikes_and_small_differences_move_nothing():
    scaler = Autoscaler(CFG)
    spike = lambda t: {0: 0.95 if (t // 1000) % 3 == 0 else 0.4, 1: 0.2}   # 1 s hot, 2 s not
    assert run(scaler, spike, 30) == []
    close = lambda t: {0: 0.85, 1: 0.72, 2: 0.7}        # hot, but the coolest is too close to gain
    assert run(Autoscaler(CFG), close, 30) == []


def test_every_pair_hot_says_a_node_is_wanted_and_moves_nothing():
    scaler = Autoscaler(CFG)
    assert run(scaler, lambda t: {0: 0.9, 1: 0.85, 2: 0.95}, 5) == []
    assert scaler.status()["node_wanted"]
    run(scaler, lambda t: {0: 0.9, 1: 0.4, 2: 0.95}, 1, start_ms=5000)
    assert not scaler.status()["node_wanted"]


def test_nothing_moves_while_an_operation_runs_or_when_disabled():
    scaler = Autoscaler(CFG)
    for t in range(0, 10_000, 250):
        assert scaler.tick(t, {0: 0.9, 1: 0.1}, operation_running=True) is None
    off = Autoscaler(AutoscaleConfig(enabled=False))
    assert run(off, lambda t: {0: 0.99, 1: 0.0}, 10) == []
    assert off.status()["hot_pairs"] == [0]            # it still watches (status, node wanted)


def test_the_hottest_buckets_move_about_the_planned_share_never_all():
    plan = Plan(source=0, to=1, share=0.25)
    rates = {0: 100.0, 6: 10.0, 12: 10.0, 18: 5.0, 24: 0.0}
    assert pick_buckets(plan, [0, 6, 12, 18, 24], rates) == [6, 12, 18]      # 25 of 125: not the 100 one
    assert pick_buckets(Plan(0, 1, 0.7), [0, 6, 12, 18, 24], rates) == [0]  # 100 of 125 for 87.5
    assert pick_buckets(Plan(0, 1, 0.5), [0, 6], {0: 5.0, 6: 5.0}) == [0]   # never all
    assert pick_buckets(Plan(0, 1, 0.1), [0, 6], {0: 90.0, 6: 30.0}) == [6]  # too hot alone: the least hot
    assert pick_buckets(plan, [0, 6, 12, 18], {}) == [0]                    # no rates: a share by count
    assert pick_buckets(plan, [3], {3: 50.0}) == []                          # one bucket cannot be split
