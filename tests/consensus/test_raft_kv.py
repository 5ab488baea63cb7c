"""The KV state machine: operations, session dedup, snapshots."""

import pytest

from deft.runtime.consensus.kv import (STALE, BadCommand, Command, KVStateMachine, decode_commands,
                                       encode_batch)


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
