"""The linearizability checker: hand-made good/bad histories and a brute-force cross-check."""

import itertools
import math
import random

import pytest

from .linearizability import (FAIL, INFO, OK, NotLinearizable, Op, check_kv_history,
                              is_linearizable, step)


def op(kind: str, args: tuple, call: float, ret: float | None, out: object = None,
       status: str = OK, key: str = "k", client: str = "c") -> Op:
    return Op(client, key, kind, args, call, ret, out, status)


GOOD = {
    "sequential": [op("put", (1,), 0, 1), op("get", (), 2, 3, 1)],
    "concurrent read sees old": [op("put", (1,), 0, 1), op("put", (2,), 2, 5), op("get", (), 3, 4, 1)],
    "concurrent read sees new": [op("put", (1,), 0, 1), op("put", (2,), 2, 5), op("get", (), 3, 4, 2)],
    "info write takes effect later": [op("put", (1,), 0, None, status=INFO), op("get", (), 5, 6, None),
                                      op("get", (), 7, 8, 1)],
    "info write never takes effect": [op("put", (1,), 0, None, status=INFO), op("get", (), 5, 6, None)],
    "failed write ignored": [op("put", (1,), 0, 1, status=FAIL), op("get", (), 2, 3, None)],
    "cas": [op("put", (1,), 0, 1), op("compare_and_set", (1, 2), 2, 3, True),
            op("compare_and_set", (1, 3), 4, 5, False), op("get", (), 6, 7, 2)],
}

BAD = {
    "read of a value never written": [op("get", (), 0, 1, 9)],
    "stale read": [op("put", (1,), 0, 1), op("put", (2,), 2, 3), op("get", (), 4, 5, 1)],
    "read from the future": [op("get", (), 0, 1, 1), op("put", (1,), 2, 3)],
    "info write seen before its call": [op("get", (), 0, 1, 1), op("put", (1,), 2, None, status=INFO)],
    "failed write seen": [op("put", (1,), 0, 1, status=FAIL), op("get", (), 2, 3, 1)],
    "cas result wrong": [op("put", (1,), 0, 1), op("compare_and_set", (1, 2), 2, 3, False)],
    "two reads disagree on order": [op("put", (1,), 0, 10, client="a"), op("put", (2,), 0, 10, client="b"),
                                    op("get", (), 1, 2, 1), op("get", (), 3, 4, 2), op("get", (), 5, 6, 1)],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_histories(name: str) -> None:
    assert is_linearizable(GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_histories(name: str) -> None:
    assert not is_linearizable(BAD[name])


def test_keys_are_checked_separately_and_the_error_names_the_key() -> None:
    ok_x = [op("put", (1,), 0, 1, key="x"), op("get", (), 2, 3, 1, key="x")]
    bad_y = [op("get", (), 0, 1, 5, key="y")]
    check_kv_history(ok_x)
    with pytest.raises(NotLinearizable, match="'y'"):
        check_kv_history(ok_x + bad_y)


def brute_force(ops: list[Op]) -> bool:
    """Definition: some subset of info ops plus all ok ops has a legal order respecting real time."""
    ok_ops = [o for o in ops if o.status == OK]
    info_ops = [o for o in ops if o.status == INFO]
    for r in range(len(info_ops) + 1):
        for chosen in itertools.combinations(info_ops, r):
            group = ok_ops + list(chosen)
            for perm in itertools.permutations(group):
                if _respects_real_time(perm) and _legal(perm):
                    return True
    return False


def _respects_real_time(perm: tuple[Op, ...]) -> bool:
    for i, a in enumerate(perm):
        for b in perm[i + 1:]:
            if (b.ret if b.status == OK else math.inf) < a.call:
                return False
    return True


def _legal(perm: tuple[Op, ...]) -> bool:
    state = None
    for o in perm:
        legal, state = step(state, o)
        if not legal:
            return False
    return True


def random_history(rng: random.Random) -> list[Op]:
    ops = []
    for _ in range(rng.randint(1, 5)):
        call = rng.randint(0, 10)
        ret = call + rng.randint(1, 6)
        kind = rng.choice(("put", "get", "compare_and_set"))
        args = {"put": (rng.randint(1, 2),), "get": (),
                "compare_and_set": (rng.choice((None, 1, 2)), rng.randint(1, 2))}[kind]
        out = {"put": None, "get": rng.choice((None, 1, 2)), "compare_and_set": rng.random() < 0.5}[kind]
        status = rng.choice((OK, OK, OK, INFO, FAIL))
        ops.append(op(kind, args, call + rng.random() / 2, ret if status == OK else None, out, status))
    return ops


def test_matches_brute_force_on_random_tiny_histories() -> None:
    rng = random.Random(2024)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        h = random_history(rng)
        expected = brute_force([o for o in h if o.status != FAIL and not (o.status == INFO and o.kind == "get")])
        assert is_linearizable(h) == expected, h
        seen[expected] += 1
    assert min(seen.values()) > 300  # both outcomes are well represented
