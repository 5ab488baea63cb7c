"""Linearizability checker for key-value histories (Wing & Gong / Lowe, as in Porcupine).

A history is a list of ``Op``: who called what on which key, logical call and
return times, the output, and a status:
  ok   -- completed with ``output``;
  fail -- definitely did not take effect (dropped before checking);
  info -- unknown (timed out): it may take effect at any point after its call,
          so its return time is infinity and its output is not checked.
Keys are independent (P-compositionality): each key's sub-history is checked
alone against a single-register model. The search is WGL with a memo of
(linearized set as a bitmask, model state), over a dancing-links list of
call/return events.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"


@dataclass
class Op:
    client: str
    key: str
    kind: str
    args: tuple[Any, ...]
    call: float
    ret: float | None = None
    output: Any = None
    status: str = INFO


class NotLinearizable(AssertionError):
    pass


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The sequential register model: (is op's output legal from state?, next state)."""
    known = op.status == OK
    if op.kind == "get":
        return (not known or op.output == state), state
    if op.kind == "put":
        return True, op.args[0]
    if op.kind == "compare_and_set":
        swapped = state == op.args[0]
        return (not known or op.output == swapped), (op.args[1] if swapped else state)
    if op.kind == "incr":
        new = (state or 0) + (op.args[0] if op.args else 1)
        return (not known or op.output == new), new
    if op.kind == "delete":
        return (not known or op.output == (state is not None)), None
    raise ValueError(f"unknown op kind {op.kind!r}")


def _relevant(ops: Sequence[Op]) -> list[Op]:
    # Failed ops never happened; a read with an unknown result constrains nothing.
    return [o for o in ops if o.status != FAIL and not (o.status == INFO and o.kind == "get")]


def is_linearizable(ops: Sequence[Op], init: Any = None) -> bool:
    """WGL search for one key's history."""
    ops = _relevant(ops)
    n = len(ops)
    if n == 0:
        return True
    # Event nodes: 0 = head sentinel; then (time, is_return, op index) sorted.
    evs = sorted([(o.call, 0, i) for i, o in enumerate(ops)]
                 + [(o.ret if o.status == OK else math.inf, 1, i) for i, o in enumerate(ops)])
    size = len(evs) + 1
    nxt = list(range(1, size + 1))
    nxt[-1] = 0
    prv = list(range(-1, size - 1))
    op_of = [-1] + [i for _, _, i in evs]
    is_call = [False] + [r == 0 for _, r, _ in evs]
    ret_node = [0] * n
    for pos, (_, r, i) in enumerate(evs, start=1):
        if r:
            ret_node[i] = pos
    for pos, (t, r, i) in enumerate(evs, start=1):
        if not r and ops[i].status == OK and ops[i].ret is not None and ops[i].ret < t:
            raise ValueError(f"op returns before it is called: {ops[i]}")

    def unlink(k: int) -> None:
        nxt[prv[k]] = nxt[k]
        if nxt[k]:
            prv[nxt[k]] = prv[k]

    def relink(k: int) -> None:
        if nxt[k]:
            prv[nxt[k]] = k
        nxt[prv[k]] = k

    state, linearized = init, 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []
    k = nxt[0]
    while nxt[0]:
        if k and is_call[k]:
            i = op_of[k]
            legal, new_state = step(state, ops[i])
            if legal:
                key = (linearized | (1 << i), _hashable(new_state))
                if key not in seen:
                    seen.add(key)
                    stack.append((k, state))
                    state, linearized = new_state, key[0]
                    unlink(k)
                    unlink(ret_node[i])
                    k = nxt[0]
                    continue
            k = nxt[k]
        else:  # reached a return (or the end): the op must have been linearized before it
            if not stack:
                return False
            k, state = stack.pop()
            i = op_of[k]
            linearized &= ~(1 << i)
            relink(ret_node[i])
            relink(k)
            k = nxt[k]
    return True


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def check_kv_history(history: Sequence[Op]) -> None:
    """Raise NotLinearizable naming the first key whose sub-history is not linearizable."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    for key in sorted(by_key):
        if not is_linearizable(by_key[key]):
            lines = "\n".join(f"  {o}" for o in sorted(by_key[key], key=lambda o: o.call))
            raise NotLinearizable(f"key {key!r} is not linearizable:\n{lines}")
