"""The controller's side of a bucket move (runtime/controller/bucketmove.py), pure, against scripted
supervisors: the steps in order, one leg per source pair, refusals and retries, and a seeded
simulation of thousands of runs with slow answers, lost answers and failovers at any point that
checks the safety rule every switch must keep:

* the buckets switch only after the source pair's *current* primary answered the hold and the
  target pair's *current* primary answered the import, both for the same attempt, with the hold's
  own payload (the state imported is the state held);
* the switch comes before the hold could lapse (``SWITCH_BY_MS`` after the first hold request);
* an attempt given up is cancelled at both ends, so no hold outlives it but by its lease.
"""

from __future__ import annotations

import random

import pytest

from deft.runtime.controller.bucketmove import ATTEMPTS, LEASE_MS, PUSH_DEADLINE_MS, SWITCH_BY_MS, BucketMove
from deft.runtime.controller.placement import Assignment

RETRY_MS = 20.0


def placed(n_buckets: int = 24) -> Assignment:
    a = Assignment(n_buckets)
    a.place({"n1": 2, "n2": 2, "n3": 2})   # 6 pairs; bucket b -> pair b % 6
    return a


class Supervisors:
    """Every worker's move state, as the supervisors would answer for it."""

    def __init__(self, rng: random.Random | None = None, slow: float = 0.0, lost: float = 0.0):
        self.rng = rng or random.Random(0)
        self.slow, self.lost = slow, lost
        self.holds: dict[tuple, dict[int, dict]] = {}     # (node, instance) -> move -> {"pair", "done"}
        self.imports: dict[tuple, dict[int, dict]] = {}
        self.log: list[tuple] = []

    def ask(self, node: str, instance: int, req: dict) -> dict | None:
        at = (node, instance)
        self.log.append((req["op"], at, req["move"], req["pair"]))
        if self.rng.random() < self.lost:
            return None
        move = req["move"]
        if req["op"] == "cancel":
            self.holds.get(at, {}).pop(move, None)
            self.imports.get(at, {}).pop(move, None)
            return {"ok": True, "done": True}
        table = self.holds if req["op"] == "hold" else self.imports
        state = table.setdefault(at, {}).setdefault(move, {"pair": req["pair"], "done": False,
                                                           "payload": req.get("payload")})
        if not state["done"] and self.rng.random() < self.slow:
            state["done"] = True   # done by the next ask
            return {"ok": True, "done": False, "retry": True, "reason": "in progress"}
        state["done"] = True
        if req["op"] == "hold":
            return {"ok": True, "done": True, "payload": f"state of move {move}"}
        return {"ok": True, "done": True, "flows": 3}


def test_a_move_holds_imports_and_switches_each_source_pair_in_turn():
    a, sup = placed(), Supervisors()
    move = BucketMove([0, 1, 2, 6, 7, 12], to_pair=2, move_base=100)
    now, verdicts = 0.0, []
    while (v := move.step(a, 1, now, sup.ask)) != "done":
        verdicts.append(v)
        now += 1
    assert [b for b in (0, 1, 2, 6, 7, 12) if a.buckets[b] != 2] == []
    # pair 0 (buckets 0, 6, 12), then pair 1 (1, 7); bucket 2 is pair 2's already
    ops = [(op, pair, move_id) for op, _, move_id, pair in sup.log]
    assert ops == [("hold", 0, 101), ("import", 2, 101), ("hold", 1, 102), ("import", 2, 102)]
    assert verdicts == ["next", "next", "switch", "next", "next", "switch"]
    assert sup.imports[a.pairs[2].primary][101]["payload"] == "state of move 101"
    assert move.report()["legs_done"] == 2 and move.flows_moved == 6


def test_a_refusal_not_worth_waiting_out_fails_the_move_with_its_reason():
    a = placed()

    def ask(node, instance, req):
        return {"ok": True, "done": False, "retry": False, "reason": "bucket moves of an NF with global operations"}

    move = BucketMove([0], to_pair=1, move_base=0)
    verdict = move.step(a, 1, 0.0, ask)
    assert verdict.startswith("failed: hold on pair 0 at n1/nf0: bucket moves of an NF")


def test_a_target_without_a_secondary_waits_and_says_why():
    a = placed()
    a.pairs[1].secondary = None
    move = BucketMove([0], to_pair=1, move_base=0)
    assert move.step(a, 1, 0.0, Supervisors().ask) == "wait"
    assert "pair 1 has no primary and secondary" in move.waiting_for


def test_a_failover_mid_move_cancels_at_both_ends_and_starts_again():
    a, sup = placed(), Supervisors()
    move = BucketMove([0], to_pair=1, move_base=0)
    assert move.step(a, 1, 0.0, sup.ask) == "next"          # held at pair 0's primary
    a.pairs[0].primary, a.pairs[0].secondary = a.pairs[0].secondary, a.pairs[0].primary   # it failed over
    assert move.step(a, 1, 1.0, sup.ask) == "wait"
    assert ("cancel", ("n1", 0), 1, 0) in sup.log
    assert "changed during the move" in move.waiting_for
    while (v := move.step(a, 1, 2.0, sup.ask)) != "done":
        assert v in ("next", "switch", "wait")
    assert a.buckets[0] == 1
    assert ("hold", a.pairs[0].primary, 2, 0) in sup.log     # attempt 2, at the new primary


def test_a_move_that_would_outlive_the_hold_is_cancelled_before_the_switch():
    a, sup = placed(), Supervisors()
    move = BucketMove([0], to_pair=1, move_base=0)
    assert move.step(a, 1, 0.0, sup.ask) == "next"
    assert move.step(a, 1, SWITCH_BY_MS + 1, sup.ask) == "wait"   # the import's answer came too late
    assert a.buckets[0] == 0
    assert [e[0] for e in sup.log] == ["hold", "cancel"]


def test_attempts_run_out_and_the_move_fails_with_the_last_reason():
    a = placed()
    move = BucketMove([0], to_pair=1, move_base=0)
    now = 0.0
    for _ in range(200):
        verdict = move.step(a, 1, now, lambda *args: None)
        if verdict.startswith("failed"):
            break
        now += SWITCH_BY_MS / 3
    assert verdict.startswith("failed") and f"{ATTEMPTS} attempts" in verdict, verdict


def test_the_switch_budget_leaves_a_whole_route_push_inside_the_lease():
    assert SWITCH_BY_MS + PUSH_DEADLINE_MS < LEASE_MS


@pytest.mark.parametrize("seed", range(40))
def test_seeded_runs_switch_only_on_a_matching_hold_and_import(seed):
    """Random buckets and targets; slow and lost answers; failovers of either pair at random steps
    (a primary and its secondary trade places). Every switch is checked against the rule above."""
    rng = random.Random(seed)
    for _ in range(25):
        a = placed(48)
        sup = Supervisors(rng, slow=rng.choice([0.0, 0.3, 0.7]), lost=rng.choice([0.0, 0.1, 0.3]))
        to_pair = rng.randrange(6)
        buckets = rng.sample(range(48), rng.randrange(1, 20))
        move = BucketMove(buckets, to_pair, move_base=1000)
        now, first_ask, switched = 0.0, {}, set()
        for _ in range(2000):
            if rng.random() < 0.03:   # a failover somewhere
                p = a.pairs[rng.randrange(6)]
                p.primary, p.secondary = p.secondary, p.primary
            before = list(a.buckets)
            leg = move.leg
            verdict = move.step(a, 1, now, sup.ask)
            if move.leg is not None and move.leg.first_ask_ms is not None:
                first_ask.setdefault(move.leg.move, move.leg.first_ask_ms)
            if verdict == "switch":
                changed = [b for b in range(48) if before[b] != a.buckets[b]]
                assert changed and all(a.buckets[b] == to_pair for b in changed)
                sources = {before[b] for b in changed}
                assert len(sources) == 1
                source = sources.pop()
                held = sup.holds.get(a.pairs[source].primary, {}).get(leg.move)
                imported = sup.imports.get(a.pairs[to_pair].primary, {}).get(leg.move)
                assert held is not None and held["done"] and held["pair"] == source
                assert imported is not None and imported["done"] and imported["pair"] == to_pair
                assert imported["payload"] == f"state of move {leg.move}"
                assert now - first_ask[leg.move] <= SWITCH_BY_MS
                switched.add(leg.move)
            if verdict == "done" or verdict.startswith("failed"):
                break
            if verdict == "wait":
                now += RETRY_MS * rng.choice([1, 1, 1, 5, 30])
        else:
            raise AssertionError("no end")
        if verdict == "done":
            assert all(a.buckets[b] == to_pair for b in buckets)
        # every attempt given up was cancelled where its hold was asked (a hold never waits for its lease)
        for op, at, m, _ in sup.log:
            if op == "hold" and m not in switched and not (verdict == "wait" and move.leg and move.leg.move == m):
                assert ("cancel", at, m) in {(o, t, mm) for o, t, mm, _ in sup.log}, (m, sup.log)
