"""The KV state machine: operations, session dedup, snapshots."""

import pytest

from deft.runtime.consensus.kv import (FENCED, STALE, BadCommand, Command, KVStateMachine, batch_entry,
                                       batch_results, decode_commands, encode_batch, fence_entry)


def apply(sm: KVStateMachine, client: str, seq: int, op: str, key: str, *args: object) -> object:
    return sm.apply(Command(client, seq, op, key, args).encode())


def test_operations() -> None:
    sm = KVStateMachine()
    assert apply(sm, "c", 1, "get", "k") is None
    assert apply(sm, "c", 2, "put", "k", "v") is None
    assert apply(sm, "c", 3, "get", "k") == "v"
    assert apply(sm, "c", 4, "compare_and_set", "k", "x", "y") is False
    assert apply(sm, "c", 5, "compare_and_set", "k", "v", "w") is True
    assert apply(sm, "c", 6, "incr", "n", 5) == 5
    assert apply(sm, "c", 7, "incr", "n") == 6
    assert apply(sm, "c", 8, "add_to_set", "s", "b") is True
    assert apply(sm, "c", 9, "add_to_set", "s", "a") is True
    assert apply(sm, "c", 10, "add_to_set", "s", "a") is False
    assert sm.data == {"k": "w", "n": 6, "s": ["a", "b"]}
    assert apply(sm, "c", 11, "delete", "k") is True
    assert apply(sm, "c", 12, "delete", "k") is False


def test_retry_is_applied_once_and_returns_the_first_result() -> None:
    sm = KVStateMachine()
    cmd = Command("c1", 1, "incr", "n", (1,)).encode()
    assert sm.apply(cmd) == 1
    assert apply(sm, "c2", 1, "incr", "n", 10) == 11
    assert sm.apply(cmd) == 1  # the duplicate in the log: same answer, no effect
    assert sm.data["n"] == 11
    assert apply(sm, "c1", 2, "incr", "n", 1) == 12
    assert sm.apply(cmd) == STALE


def test_snapshot_keeps_the_dedup_table() -> None:
    sm = KVStateMachine()
    cmd = Command("c1", 1, "incr", "n", (2,)).encode()
    sm.apply(cmd)
    restored = KVStateMachine.restore(sm.snapshot())
    assert restored.apply(cmd) == 2 and restored.data == {"n": 2}
    assert restored.snapshot() == sm.snapshot()


@pytest.mark.parametrize("cmd", [Command("c", 1, "drop_table", "k"), Command("c", 0, "get", "k")])
def test_bad_commands_are_refused_at_encode(cmd: Command) -> None:
    with pytest.raises(BadCommand):
        cmd.encode()


def test_a_batch_is_one_entry_with_per_command_dedup() -> None:
    sm = KVStateMachine()
    batch = [Command("w1", 1, "incr", "n", (1,)), Command("w2", 1, "put", "k", ("v",)),
             Command("w1", 2, "incr", "n", (5,))]
    entry = encode_batch(batch)
    assert sm.apply(entry) == [1, None, 6]
    assert sm.apply(entry) == [1, None, 6]  # replayed after a failover: same answers, no effect
    assert sm.data == {"n": 6, "k": "v"}
    restored = KVStateMachine.restore(sm.snapshot())
    assert restored.apply(entry) == [1, None, 6] and restored.data == sm.data
    assert sm.apply(Command("w1", 3, "incr", "n", (1,)).encode()) == 7
    assert sm.apply(entry)[0] == STALE  # w1 moved on; w2's window still answers
    assert sm.apply(entry)[1] is None
    assert decode_commands(entry) == batch
    assert decode_commands(batch[0].encode()) == [batch[0]]


def test_add_to_window_counts_the_members_of_the_sliding_window() -> None:
    sm = KVStateMachine()
    assert apply(sm, "c", 1, "add_to_window", "w", "a", 100, 50) == 1
    assert apply(sm, "c", 2, "add_to_window", "w", "b", 120, 50) == 2
    assert apply(sm, "c", 3, "add_to_window", "w", "a", 130, 50) == 2     # a again: refreshed, not added
    assert apply(sm, "c", 4, "add_to_window", "w", "c", 175, 50) == 2     # b (120 < 125) evicted
    assert sm.data["w"] == {"a": 130, "c": 175}
    assert apply(sm, "c", 5, "add_to_window", "w", "a", 110, 50) == 2     # an older clock: keeps 130
    assert sm.data["w"] == {"a": 130, "c": 175}
    assert apply(sm, "c", 6, "add_to_window", "w", "d", 1000, 50) == 1
    assert apply(sm, "c", 7, "add_to_window", "w", 7, 1000, 50) == 2      # non-string member: its JSON
    assert sm.data["w"] == {"d": 1000, "7": 1000}
    restored = KVStateMachine.restore(sm.snapshot())
    assert restored.data == sm.data and restored.snapshot() == sm.snapshot()
    # Eviction does not depend on the dict's order: a restored replica (sorted keys) evicts alike.
    for m in (sm, restored):
        assert m.apply(Command("c", 8, "add_to_window", "w", ("e", 1040, 50)).encode()) == 3
    assert restored.snapshot() == sm.snapshot()


def test_batch_entry_is_one_session_slot_retried_whole() -> None:
    sm = KVStateMachine()
    ops = [("incr", "n", (2,)), ("add_to_set", "s", ("x",)), ("add_to_window", "w", ("m", 10, 5)),
           ("get", "n", ()), ("compare_and_set", "n", (2, 9))]
    entry = batch_entry("pair0", 1, ops)
    assert sm.apply(entry) == [2, True, 1, 2, True]
    snap = sm.snapshot()
    assert sm.apply(entry) == [2, True, 1, 2, True]      # re-proposed after a failover: first results
    assert sm.apply(batch_entry("pair0", 1, ops[:1])) == [2, True, 1, 2, True]   # same slot, any content
    assert sm.snapshot() == snap and sm.data["n"] == 9
    restored = KVStateMachine.restore(snap)
    assert restored.apply(entry) == [2, True, 1, 2, True] and restored.snapshot() == snap
    assert batch_results(sm.apply(entry), len(ops)) == [2, True, 1, 2, True]
    # Another client's batches do not disturb pair0's slot; pair0's next batch does.
    assert sm.apply(batch_entry("pair1", 1, [("incr", "n", (1,))])) == [10]
    assert sm.apply(entry) == [2, True, 1, 2, True]
    assert sm.apply(batch_entry("pair0", 2, [("incr", "n", (1,))])) == [11]
    assert sm.apply(entry) == STALE
    assert batch_results(sm.apply(entry), len(ops)) == [STALE] * len(ops)
    assert sm.data["n"] == 11
    assert decode_commands(entry)[0].op == "multi"
    assert Command.decode(entry).client == "pair0"        # one command: the driver's _apply reads it


def test_batch_entry_with_a_failing_op_applies_the_others_on_every_replica() -> None:
    a = KVStateMachine()
    apply(a, "c", 1, "put", "k", "text")
    b = KVStateMachine.restore(a.snapshot())
    entry = batch_entry("w", 1, [("incr", "n", (1,)), ("incr", "k", (1,)), ("add_to_window", "k", ("m", 1, 1))])
    assert a.apply(entry) == b.apply(entry) == [1, {"error": "ValueError"}, {"error": "TypeError"}]
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize("ops", [[("drop_table", "k", ())], [("multi", "", ([],))], [("incr", 3, (1,))],
                                 [("incr", "k")], [("incr", "k", 1)], ["incr"], [7]])
def test_batch_entry_refuses_malformed_ops(ops: list) -> None:
    with pytest.raises(BadCommand):
        batch_entry("w", 1, ops)


def test_batch_results_checks_the_shape() -> None:
    assert batch_results([1, 2], 2) == [1, 2]
    with pytest.raises(ValueError):
        batch_results([1], 2)
    assert batch_results(STALE, 0) == []


def test_sessions_idle_for_the_ttl_are_forgotten_the_same_way_on_every_replica(monkeypatch):
    from deft.runtime.consensus import kv

    monkeypatch.setattr(kv, "SESSION_TTL_ENTRIES", 10)
    monkeypatch.setattr(kv, "EXPIRE_EVERY_ENTRIES", 4)
    a, b = KVStateMachine(), KVStateMachine()
    for sm in (a, b):
        sm.apply(Command("op1", 1, "incr", "k").encode(), index=1)   # an operator command: never again
        for i in range(2, 17):
            sm.apply(Command("worker", i - 1, "incr", "w").encode(), index=i)
    assert "op1" not in a.sessions and "worker" in a.sessions        # idle > 10 entries at index 16
    assert a.snapshot() == b.snapshot()                               # deterministic across replicas
    restored = KVStateMachine.restore(a.snapshot())
    assert restored.last_index == a.last_index
    assert restored.apply(Command("worker", 15, "incr", "w").encode(), index=17) == 15  # still deduplicated


def test_a_fence_returns_what_the_closed_sessions_applied_and_refuses_their_new_commands() -> None:
    """The take-over's view of a dead primary (G4): its batches applied so far, with their meta;
    nothing it proposed can take effect after the fence; retries of what took effect still answer."""
    sm = KVStateMachine()
    old = "pair3/node2.0/e5"
    assert sm.apply(batch_entry(f"{old}/0", 1, [("incr", "n", (2,))], {"calls": [[2, 1]]}), index=1) == [2]
    assert sm.apply(batch_entry(f"{old}/1", 1, [("incr", "n", (3,))]), index=2) == [5]
    assert sm.apply(batch_entry("pair3/node2.0/e4/0", 7, [("incr", "other", (1,))]), index=3) == [1]
    got = sm.apply(fence_entry("pair3/node1.1.1/fence", 1, old), index=4)
    assert got == {f"{old}/0": {"seq": 1, "results": [2], "meta": {"calls": [[2, 1]]}},
                   f"{old}/1": {"seq": 1, "results": [5], "meta": None}}     # not the e4 session
    assert sm.apply(fence_entry("pair3/node1.1.1/fence", 1, old), index=5) == got   # a retried fence
    late = batch_entry(f"{old}/2", 1, [("incr", "n", (100,))], {"calls": [[1, 1]]})
    assert sm.apply(late, index=6) == FENCED and sm.data["n"] == 5        # in flight at the crash
    assert sm.apply(batch_entry(f"{old}/0", 2, [("incr", "n", (1,))]), index=7) == FENCED
    assert sm.apply(batch_entry(f"{old}/0", 1, [("incr", "n", (9,))]), index=8) == [2]  # a replay's retry
    assert batch_results(FENCED, 2) == [STALE, STALE]
    restored = KVStateMachine.restore(sm.snapshot())                       # a restored replica fences alike
    assert restored.apply(late, index=9) == FENCED and restored.data == sm.data
    assert apply(sm, "pair3/node1.1.1/fence", 2, "incr", "n", 1) == 6      # the fencer's own prefix is open


def test_fences_expire_with_the_session_ttl(monkeypatch) -> None:
    from deft.runtime.consensus import kv

    monkeypatch.setattr(kv, "SESSION_TTL_ENTRIES", 10)
    monkeypatch.setattr(kv, "EXPIRE_EVERY_ENTRIES", 4)
    sm = KVStateMachine()
    sm.apply(batch_entry("p/a/0", 1, [("incr", "n", (1,))], [1]), index=1)
    sm.apply(fence_entry("f", 1, "p/a"), index=2)
    for i in range(3, 17):
        sm.apply(Command("w", i, "incr", "w").encode(), index=i)
    assert sm.fenced == {} and sm.meta == {} and "p/a/0" not in sm.sessions


def test_a_fence_needs_a_prefix_and_stays_out_of_a_batch() -> None:
    with pytest.raises(BadCommand):
        fence_entry("c", 1, "")
    with pytest.raises(BadCommand):
        batch_entry("c", 1, [("fence", "p", ())])
