"""Seeded deterministic simulation of a Raft cluster in one process (FoundationDB/VOPR style).

One integer seed replays a run bit for bit: a virtual clock, a heap of
``(time, seq, event)``, and one ``random.Random(seed)`` from which every other
RNG (per node, network, clients, faults) is derived. Swarm mode: the seed also
decides which faults are on and how hard (``Faults.swarm``).

Faults (during ``fault_ms``): message drop, duplication, delay (reordering);
full, one-node and one-way partitions that later heal; crashes (volatile state
and any Ready not yet persisted are lost; durable state is only what the Ready
contract wrote), including crashes while persisting (only a prefix of the
entries reaches the disk, a torn write) and after persisting but before
sending; restarts; pauses (a stopped process: no ticks, messages wait);
tick-rate skew; leadership transfers; membership changes (a spare node joins
as a learner, voters are promoted, demoted and removed); periodic snapshots
and log compaction, so lagging nodes catch up by InstallSnapshot.
After ``fault_ms`` everything heals and the run continues ``quiet_ms``.

Checked: every safety invariant after every event (``invariants.Observer``);
the client history (gets served half by the log, half by ReadIndex) is
linearizable (``linearizability``); liveness only after
healing: one leader, every client operation answered, replicas converged.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deft.runtime.consensus import (Config, Entry, EntryKind, InvalidRequest, Membership,
                                    MemoryStorage, Message, NotLeader, RaftCore, Role)
from deft.runtime.consensus.kv import Command, KVStateMachine
from deft.runtime.consensus.storage import DiskStorage, encode_record

from .invariants import Observer
from .linearizability import INFO, Op, check_kv_history
from .sim_workload import Client, ClientWorkload

TICK_MS = 10.0


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0
    dup: float = 0.0
    slow: float = 0.0            # probability a message takes 20-200 ms (reorders)
    chaos_ms: float = 0.0        # mean time between fault actions; 0 = none
    crash: bool = False
    crash_mid_ready: float = 0.0  # per Ready: crash during persist, or after it but before send
    partition: bool = False
    pause: bool = False
    skew: float = 0.0            # tick interval varies by up to this fraction per node
    reconfig: bool = False       # membership changes (a spare node joins; voters come and go)

    @staticmethod
    def swarm(rng: random.Random) -> Faults:
        on = lambda: rng.random() < 0.5  # noqa: E731 - one coin per fault kind
        return Faults(
            drop=rng.uniform(0, 0.2) if on() else 0.0,
            dup=rng.uniform(0, 0.1) if on() else 0.0,
            slow=rng.uniform(0, 0.2) if on() else 0.0,
            chaos_ms=rng.uniform(100, 600),
            crash=on(), crash_mid_ready=rng.uniform(0, 0.01) if on() else 0.0,
            partition=on(), pause=on(), skew=rng.uniform(0, 0.3) if on() else 0.0,
            reconfig=on())


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage | DiskStorage
    rng: random.Random
    tick_ms: float
    core: RaftCore | None = None
    kv: KVStateMachine | None = None
    paused_until: float = 0.0
    waiting: set[tuple[str, int]] = field(default_factory=set)  # client requests proposed here
    reads: dict[bytes, tuple[str, int, str]] = field(default_factory=dict)  # ReadIndex ctx -> op
    confirmed: list[tuple[int, bytes]] = field(default_factory=list)  # (read index, ctx)


class Simulation(ClientWorkload):
    def __init__(self, seed: int, *, n_nodes: int | None = None, faults: Faults | None = None,
                 fault_ms: float = 2500.0, quiet_ms: float = 2500.0, n_clients: int = 3,
                 keys: tuple[str, ...] = ("x", "y"), compact_every: int | None = None,
                 disk_dir: Path | None = None,
                 schedule: list[tuple[float, str, int]] | None = None) -> None:
        """``disk_dir``: keep each node's state in real files (DiskStorage, no fsync) there;
        a crash then closes them and a restart replays them, torn writes included.
        ``schedule``: explicit ``(time, action, node)`` faults instead of swarm chaos."""
        self.schedule = schedule
        root = random.Random(seed)
        self.seed = seed
        self.net_rng = random.Random(root.getrandbits(64))
        self.fault_rng = random.Random(root.getrandbits(64))
        self.client_rng = random.Random(root.getrandbits(64))
        self.faults = faults if faults is not None else Faults.swarm(random.Random(root.getrandbits(64)))
        n = n_nodes or root.choice((3, 3, 5))
        self.compact_every = root.choice((0, 5, 20)) if compact_every is None else compact_every
        self.max_entries, self.max_inflight = root.choice((1, 4, 16)), root.choice((1, 4, 64))
        self.voters0 = tuple(range(1, n + 1))
        self.ids = self.voters0 + ((n + 1,) if self.faults.reconfig else ())
        self.disk_dir = disk_dir
        self.nodes = {i: SimNode(i, self._open_storage(i), random.Random(root.getrandbits(64)),
                                 TICK_MS * (1 + root.uniform(-1, 1) * self.faults.skew))
                      for i in self.ids}
        self.fault_ms, self.end_ms = fault_ms, fault_ms + quiet_ms
        self.keys = keys
        self.clients = [Client(f"c{k}", self.client_rng.choice(self.ids)) for k in range(n_clients)]
        self.now = 0.0
        self.clock = 0                # logical time for the history: strictly increasing
        self.events: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.obs = Observer()
        self.history: list[Op] = []
        self.stats = {"events": 0, "msgs": 0, "crashes": 0, "snapshots_installed": 0,
                      "conf_changes": 0, "torn_tails_repaired": 0}
        self.healed = False

    # -- event queue -------------------------------------------------------------------
    def at(self, t: float, kind: str, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, args))

    def run(self) -> Simulation:
        for node in self.nodes.values():
            self._start(node)
        for c in self.clients:
            self.at(self.client_rng.uniform(0, 200), "client", c)
        if self.schedule is not None:
            for t, action, nid in self.schedule:  # an explicit fault schedule (Hypothesis)
                self.at(t, "fault", action, self.ids[nid % len(self.ids)])
        elif self.faults.chaos_ms:
            self.at(self.fault_rng.expovariate(1 / self.faults.chaos_ms), "chaos")
        self.at(self.fault_ms, "heal")
        try:
            while self.events and self.events[0][0] <= self.end_ms:
                self.now, _, kind, args = heapq.heappop(self.events)
                self.stats["events"] += 1
                getattr(self, "_on_" + kind)(*args)
                self.obs.check({i: n.core for i, n in self.nodes.items() if n.core is not None})
        finally:
            self.close()
        self.stats["leaders"] = len(self.obs.leaders)
        self._check_end()
        return self

    # -- nodes -------------------------------------------------------------------------
    def _open_storage(self, nid: int) -> MemoryStorage | DiskStorage:
        if self.disk_dir is None:
            return MemoryStorage()
        return DiskStorage(self.disk_dir / f"n{nid}", fsync=False)

    def _start(self, node: SimNode) -> None:
        if isinstance(node.storage, DiskStorage) and node.storage.closed:
            node.storage = self._open_storage(node.id)  # after a crash: recover from the files
            self.stats["torn_tails_repaired"] += node.storage.repaired_bytes > 0
        cfg = Config(node.id, self.voters0, election_tick=10, heartbeat_tick=2,
                     max_entries_per_msg=self.max_entries, max_inflight=self.max_inflight)
        node.core = RaftCore(cfg, node.storage, random.Random(node.rng.getrandbits(64)))
        snap = node.storage.snapshot
        node.kv = KVStateMachine.restore(snap.data) if snap else KVStateMachine()
        node.waiting = set()
        node.reads, node.confirmed = {}, []
        self.obs.node_restarted(node.id)
        self.at(self.now + node.rng.uniform(0, node.tick_ms), "tick", node, node.core)

    def _crash(self, node: SimNode) -> None:
        node.core = node.kv = None
        if isinstance(node.storage, DiskStorage):
            node.storage.close()
        self.stats["crashes"] += 1

    def _deferred(self, node: SimNode, kind: str, *args: Any) -> bool:
        """A paused node handles nothing; its events wait until it resumes."""
        if self.now < node.paused_until:
            self.at(node.paused_until + node.rng.uniform(0, 1), kind, *args)
            return True
        return False

    def _on_tick(self, node: SimNode, core: RaftCore) -> None:
        if node.core is not core:
            return  # a tick chain of a crashed incarnation
        if self._deferred(node, "tick", node, core):
            return
        core.tick()
        self._process(node)
        self.at(self.now + node.tick_ms, "tick", node, core)

    def _process(self, node: SimNode) -> None:
        """Act on every Ready exactly as a driver must: persist, send, apply, advance."""
        while node.core is not None and (rd := node.core.ready()) is not None:
            if not self.healed and self.fault_rng.random() < self.faults.crash_mid_ready:
                # Crash while persisting: a prefix of the entries reached the disk
                # (a torn write), the hard state did not; nothing was sent.
                self._torn_write(node, rd.entries)
                self._crash(node)
                return
            node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            self.obs.on_persist(node.id, rd.hard_state, rd.entries, node.storage)
            if not self.healed and self.fault_rng.random() < self.faults.crash_mid_ready:
                self._crash(node)
                return
            for m in rd.messages:
                self.obs.on_send(m, node.storage.hard_state, node.storage)
                self._send(m)
            if rd.snapshot is not None:
                node.kv = KVStateMachine.restore(rd.snapshot.data)
                self.stats["snapshots_installed"] += 1
            for e in rd.committed:
                self.obs.on_apply(node.id, e)
                if e.kind is EntryKind.NORMAL:
                    self._apply(node, e.data)
            node.confirmed += [(rs.index, rs.context) for rs in rd.read_states]
            node.core.advance(rd)
            self._serve_reads(node)
            self._maybe_compact(node)

    def _serve_reads(self, node: SimNode) -> None:
        """Answer confirmed ReadIndex reads whose index the state machine has reached."""
        assert node.core is not None and node.kv is not None
        applied = node.core.log.applied
        ready = [(i, ctx) for i, ctx in node.confirmed if i <= applied]
        node.confirmed = [(i, ctx) for i, ctx in node.confirmed if i > applied]
        for _, ctx in ready:
            client, seq, key = node.reads.pop(ctx)
            self.at(self.now + self.net_rng.uniform(1, 5), "reply", client, seq,
                    node.kv.data.get(key))

    def _maybe_compact(self, node: SimNode) -> None:
        """Snapshot the state machine every ``compact_every`` applied entries (0 = never)."""
        core, kv = node.core, node.kv
        assert core is not None and kv is not None
        if self.compact_every and core.log.applied - core.log.offset >= self.compact_every:
            snap = core.compact(core.log.applied, kv.snapshot())
            node.storage.compact(snap)
            self.obs.on_snapshot(node.id, snap)

    def _torn_write(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        """Part of a Ready's entries reaches the disk before the crash."""
        if isinstance(node.storage, DiskStorage):
            raw = b"".join(encode_record(e) for e in entries)
            node.storage._log.write(raw[:self.fault_rng.randint(0, len(raw))])  # cut anywhere
            node.storage._log.flush()
        else:
            k = self.fault_rng.randint(0, len(entries))
            if k:
                node.storage.save(None, entries[:k])
                self.obs.on_persist(node.id, None, entries[:k], node.storage)

    def _apply(self, node: SimNode, data: bytes) -> None:
        assert node.kv is not None
        result = node.kv.apply(data)
        cmd = Command.decode(data)
        if (cmd.client, cmd.seq) in node.waiting:
            node.waiting.discard((cmd.client, cmd.seq))
            self.at(self.now + self.net_rng.uniform(1, 5), "reply", cmd.client, cmd.seq, result)

    # -- network -----------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        self.stats["msgs"] += 1
        f = self.faults if not self.healed else Faults()
        if self.net_rng.random() < f.drop:
            return
        copies = 2 if self.net_rng.random() < f.dup else 1
        for _ in range(copies):
            slow = self.net_rng.random() < f.slow
            delay = self.net_rng.uniform(20, 200) if slow else self.net_rng.uniform(1, 5)
            self.at(self.now + delay, "deliver", m)

    def _on_deliver(self, m: Message) -> None:
        node = self.nodes[m.dst]
        if node.core is None or (m.src, m.dst) in self.blocked:
            return
        if self._deferred(node, "deliver", m):
            return
        node.core.step(m)
        self._process(node)

    # -- faults ------------------------------------------------------------------------
    def _on_chaos(self) -> None:
        """Swarm mode: a random enabled fault now, and the next one later."""
        if self.healed:
            return
        rng, f = self.fault_rng, self.faults
        actions = ["heal_links", "transfer"]
        if f.crash:
            actions += ["crash", "restart"]
        if f.partition:
            actions += ["isolate", "split", "one_way"]
        if f.pause:
            actions.append("pause")
        if f.reconfig:
            actions += ["reconfigure"] * 2
        self._on_fault(rng.choice(actions), rng.choice(self.ids))
        self.at(self.now + rng.expovariate(1 / f.chaos_ms), "chaos")

    def _on_fault(self, action: str, nid: int) -> None:
        """Apply one fault; leader-only actions go to the current leader if there is one."""
        if self.healed:
            return
        rng, node = self.fault_rng, self.nodes[nid]
        if action in ("transfer", "reconfigure"):
            node = next((n for n in self.nodes.values()
                         if n.core is not None and n.core.role is Role.LEADER), node)
        if action == "crash" and node.core is not None:
            self._crash(node)
        elif action == "restart" and node.core is None:
            self._start(node)
        elif action == "isolate":
            self.blocked |= {(a, b) for a in self.ids for b in self.ids if node.id in (a, b)}
        elif action == "split":
            side = set(rng.sample(self.ids, len(self.ids) // 2))
            self.blocked |= {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
        elif action == "one_way":
            self.blocked.add((node.id, rng.choice(self.ids)))
        elif action == "pause":
            node.paused_until = max(node.paused_until, self.now + rng.uniform(50, 500))
        elif action == "transfer" and node.core is not None and node.core.role is Role.LEADER:
            try:
                node.core.transfer_leadership(rng.choice(self.ids))
            except InvalidRequest:
                pass  # itself or not a voter
            self._process(node)
        elif action == "reconfigure" and node.core is not None and node.core.role is Role.LEADER:
            self._reconfigure(node)
        elif action == "heal_links":
            self.blocked.clear()

    def _reconfigure(self, node: SimNode) -> None:
        """Propose one random single-server change: add a learner, promote, demote or remove."""
        assert node.core is not None
        rng, m = self.fault_rng, node.core.membership
        voters, learners = set(m.voters), set(m.learners)
        target = rng.choice(self.ids)
        if target in learners:
            learners.discard(target)
            voters.add(target)          # promote
        elif target not in voters:
            learners.add(target)        # join as a learner first
        elif len(voters) > 2:
            voters.discard(target)      # remove or demote
            if rng.random() < 0.5:
                learners.add(target)
        try:
            node.core.propose_conf_change(Membership.of(voters, learners))
        except (InvalidRequest, NotLeader):
            return  # a change is pending, the leader is too new or handing over
        self.stats["conf_changes"] += 1
        self._process(node)

    def _on_heal(self) -> None:
        self.healed = True
        self.blocked.clear()
        for node in self.nodes.values():
            node.paused_until = 0.0
            if node.core is None:
                self._start(node)

    # -- end of run --------------------------------------------------------------------
    def close(self) -> None:
        for node in self.nodes.values():
            if isinstance(node.storage, DiskStorage):
                node.storage.close()

    def _check_end(self) -> None:
        for c in self.clients:
            if c.op is not None:  # unanswered: it may or may not have taken effect
                c.op.status = INFO
                self.history.append(c.op)
        check_kv_history(self.history)
        live = [n.core for n in self.nodes.values() if n.core is not None]
        leaders = [c for c in live if c.role is Role.LEADER]
        assert len(leaders) == 1, f"liveness: {len(leaders)} leaders after healing"
        pending = [c.op for c in self.clients if c.op is not None]
        assert not pending, f"liveness: unanswered after healing: {pending}"
        lead = leaders[0]
        members = lead.membership.members  # removed nodes are not kept up to date
        states = {n.id: (n.core.log.applied, n.kv.snapshot()) for n in self.nodes.values()
                  if n.core is not None and n.kv is not None and n.id in members}
        assert len(set(states.values())) == 1, f"liveness: replicas differ: {states}"
        assert lead.log.applied == lead.log.last_index(), "liveness: leader has unapplied entries"
