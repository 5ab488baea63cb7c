"""The simulated clients (mixed into ``sim.Simulation``): K clients, one operation at a time.

Each operation is a put (unique value), get or compare-and-set on a few keys,
sent to the node the client believes leads. NotLeader redirects to the hint;
a timeout retries at a random node with the same (client, seq), so the session
table applies it at most once. Gets go through the log or (half of them) by
ReadIndex at whichever member the client asks (followers forward to the leader). Every answered operation joins the history checked for
linearizability; one still unanswered at the end is recorded as indeterminate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deft.runtime.consensus import NotLeader, NotReady
from deft.runtime.consensus.kv import Command

from .linearizability import OK, Op

if TYPE_CHECKING:
    from .sim import SimNode


@dataclass
class Client:
    id: str
    target: int
    seq: int = 0
    attempt: int = 0
    op: Op | None = None
    cmd: bytes = b""
    last_seen: dict[str, Any] = field(default_factory=dict)
    read_index: bool = False  # serve the current get by ReadIndex instead of the log


class ClientWorkload:
    """Client event handlers; the Simulation provides the fields used here."""

    if TYPE_CHECKING:
        clients: list[Client]
        client_rng: Any
        net_rng: Any
        nodes: dict[int, SimNode]
        ids: tuple[int, ...]
        keys: tuple[str, ...]
        now: float
        clock: int
        fault_ms: float
        end_ms: float
        history: list[Op]

        def at(self, t: float, kind: str, *args: Any) -> None: ...
        def _deferred(self, node: SimNode, kind: str, *args: Any) -> bool: ...
        def _process(self, node: SimNode) -> None: ...

    def _on_client(self, c: Client) -> None:
        """Start the client's next operation (one outstanding at a time)."""
        if self.now > self.fault_ms + (self.end_ms - self.fault_ms) / 3:
            return  # stop issuing; operations in flight must still finish
        rng = self.client_rng
        c.seq += 1
        key = rng.choice(self.keys)
        kind = rng.choice(("put", "put", "get", "get", "compare_and_set"))
        value = f"{c.id}-{c.seq}"
        args: tuple[Any, ...] = {"put": (value,), "get": (),
                                 "compare_and_set": (c.last_seen.get(key), value)}[kind]
        self.clock += 1
        c.op = Op(client=c.id, key=key, kind=kind, args=args, call=self.clock)
        c.cmd = Command(c.id, c.seq, kind, key, args).encode()
        c.read_index = rng.random() < 0.5
        self._attempt(c)

    def _attempt(self, c: Client) -> None:
        c.attempt += 1
        self.at(self.now + self.net_rng.uniform(1, 5), "request", c, c.seq, c.target)
        self.at(self.now + 300, "timeout", c, c.seq, c.attempt)

    def _on_request(self, c: Client, seq: int, target: int) -> None:
        node = self.nodes[target]
        if node.core is None or seq != c.seq or c.op is None:
            return  # node down, or the operation already finished
        if self._deferred(node, "request", c, seq, target):
            return
        try:
            if c.op.kind == "get" and c.read_index:
                ctx = f"{c.id}:{seq}:{c.attempt}".encode()
                node.core.read_index(ctx)
                node.reads[ctx] = (c.id, seq, c.op.key)
            else:
                node.core.propose(c.cmd)
                node.waiting.add((c.id, seq))
        except NotLeader as e:
            self.at(self.now + self.net_rng.uniform(1, 5), "redirect", c, seq, e.leader_hint)
            return
        except NotReady:
            self.at(self.now + self.net_rng.uniform(1, 5), "redirect", c, seq, target)
            return
        self._process(node)

    def _on_redirect(self, c: Client, seq: int, hint: int | None) -> None:
        if seq == c.seq and c.op is not None:
            c.target = hint if hint is not None else self.client_rng.choice(self.ids)
            self.at(self.now + 10, "retry", c, seq)

    def _on_retry(self, c: Client, seq: int) -> None:
        if seq == c.seq and c.op is not None:
            self._attempt(c)

    def _on_timeout(self, c: Client, seq: int, attempt: int) -> None:
        if seq == c.seq and attempt == c.attempt and c.op is not None:
            c.target = self.client_rng.choice(self.ids)
            self._attempt(c)  # same (client, seq): applied at most once

    def _on_reply(self, client_id: str, seq: int, result: Any) -> None:
        c = next(c for c in self.clients if c.id == client_id)
        if seq != c.seq or c.op is None:
            return  # a duplicate answer to a finished operation
        self.clock += 1
        op = c.op
        op.ret, op.output, op.status = self.clock, result, OK
        if op.kind == "get":
            c.last_seen[op.key] = result
        elif op.kind == "put" or (op.kind == "compare_and_set" and result):
            c.last_seen[op.key] = op.args[-1]
        self.history.append(op)
        c.op = None
        self.at(self.now + self.client_rng.uniform(0, 20), "client", c)
