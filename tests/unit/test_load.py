"""Load per instance and per pair from the heartbeats' cumulative counters (runtime/controller/load.py)."""

from __future__ import annotations

from deft.runtime.controller.load import WINDOW_MS, LoadMeter


def beat(busy_ms: float, pairs: dict[int, int], in_ring: int = 0) -> dict:
    return {"busy_ns": int(busy_ms * 1e6), "pairs": {str(p): n for p, n in pairs.items()}, "in_ring": in_ring}


def test_rates_over_a_window_and_a_pairs_share_of_its_primarys_busy_time():
    m = LoadMeter()
    m.observe("n1/nf0", 0.0, beat(0, {0: 0, 3: 0}))
    m.observe("n1/nf0", WINDOW_MS / 2, beat(100, {0: 500, 3: 100}))     # inside the window: no rate yet
    assert m.pair_load(0, "n1/nf0")["pps"] == 0
    m.observe("n1/nf0", 1000.0, beat(400, {0: 1500, 3: 500}, in_ring=7))
    assert m.pair_load(0, "n1/nf0") == {"pps": 1500.0, "busy": 0.3, "input_ring": 7}   # 40 % busy, 3/4 of it pair 0
    assert m.pair_load(3, "n1/nf0")["busy"] == 0.1
    assert m.instance_load("n1/nf0") == {"busy": 0.4, "pps": 2000.0, "input_ring": 7}


def test_a_pair_served_by_two_instances_in_one_window_adds_up():
    m = LoadMeter()
    for inst, n in (("n1/nf0", 300), ("n2/nf1", 200)):
        m.observe(inst, 0.0, beat(0, {2: 0}))
        m.observe(inst, 1000.0, beat(10, {2: n}))
    assert m.pair_pps(2) == 500.0


def test_a_restarted_worker_starts_a_new_window_instead_of_a_negative_rate():
    m = LoadMeter()
    m.observe("n1/nf0", 0.0, beat(0, {0: 0}))
    m.observe("n1/nf0", 1000.0, beat(500, {0: 1000}))
    m.observe("n1/nf0", 1200.0, beat(1, {0: 3}))       # counters from zero again
    m.observe("n1/nf0", 2200.0, beat(101, {0: 503}))
    assert m.pair_load(0, "n1/nf0")["pps"] == 500.0 and m.instance_load("n1/nf0")["busy"] == 0.1


def test_beats_without_load_fields_leave_no_trace():
    m = LoadMeter()
    m.observe("n1/nf0", 0.0, {"lag": 0})
    assert m.instance_load("n1/nf0") == {"busy": 0.0, "pps": 0.0, "input_ring": 0}
