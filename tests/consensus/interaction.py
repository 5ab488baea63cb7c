"""The scripted-test environment (etcd-io/raft rafttest style): in-memory nodes driven by commands.

Each command is one handler function ``cmd_<name>(env, args) -> list[str]``
(dashes in command names become underscores); ``Env.run(line)`` dispatches.
Messages sit in one FIFO "network" until ``deliver-msgs`` or ``stabilize``
moves them; nothing happens unless a command says so, which is what makes
the golden output of a script stable.

Commands:
  add-nodes N [voters=1,2,3] [prevote=true] [checkquorum=true] [max-entries=64]
            [max-inflight=256] [seed=0]
  propose-conf-change ID voters=1,2,3 [learners=4]            membership [ID...]
  campaign ID                 propose ID DATA            tick-election ID
  tick-heartbeat ID           process-ready ID...        stabilize [ID...]
  deliver-msgs [from=ID] [to=ID] [type=MsgApp] [drop=true] [keep=true] [reverse=true]
  deliver-stash [reverse=true] [keep=true]              progress ID
  compact ID INDEX            transfer-leadership FROM TO  read-index ID CONTEXT
  crash ID                    restart ID                 partition A B / C D E
  heal                        status [ID...]             raft-log ID...
"""

from __future__ import annotations

import random
from collections.abc import Callable

from deft.runtime.consensus import (Config, InvalidRequest, Membership, MemoryStorage, Message,
                                    NotLeader, NotReady, RaftCore, Ready, describe_entry)


class Env:
    def __init__(self) -> None:
        self.cores: dict[int, RaftCore | None] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.configs: dict[int, Config] = {}
        self.network: list[Message] = []
        self.stash: list[Message] = []
        self.read_log: list[tuple[int, int, bytes]] = []  # (node, index, context) confirmed
        self.blocked: set[tuple[int, int]] = set()
        self.seed = 0

    def core(self, nid: int) -> RaftCore:
        c = self.cores[nid]
        if c is None:
            raise ValueError(f"node {nid} is down")
        return c

    def run(self, line: str) -> str:
        words = line.split()
        handler = HANDLERS.get(words[0].replace("-", "_"))
        if handler is None:
            raise ValueError(f"unknown command {words[0]!r}")
        out = handler(self, words[1:])
        return "\n".join(out) if out else "ok"

    def handle_ready(self, nid: int, rd: Ready) -> list[str]:
        out = []
        if rd.snapshot is not None:
            out.append(f"  persist Snapshot {rd.snapshot.term}/{rd.snapshot.index} "
                       f"data={rd.snapshot.data.decode()!r}")
        if rd.entries:
            out.append("  persist Entries: " + ", ".join(describe_entry(e) for e in rd.entries))
        if rd.hard_state is not None:
            hs = rd.hard_state
            out.append(f"  persist HardState term={hs.term} vote={hs.vote} commit={hs.commit}")
        self.storages[nid].save(rd.hard_state, rd.entries, rd.snapshot)
        for m in rd.messages:
            out.append(f"  send {m.describe()}")
            self.network.append(m)
        if rd.committed:
            out.append("  apply " + ", ".join(describe_entry(e) for e in rd.committed))
        for rs in rd.read_states:
            out.append(f"  read confirmed: {rs.context.decode()} at index {rs.index}")
            self.read_log.append((nid, rs.index, rs.context))
        self.core(nid).advance(rd)
        return out


def _opts(args: list[str]) -> tuple[list[str], dict[str, str]]:
    pos = [a for a in args if "=" not in a]
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    return pos, kv


def _ids(env: Env, args: list[str]) -> list[int]:
    return [int(a) for a in args] if args else sorted(env.cores)


def cmd_add_nodes(env: Env, args: list[str]) -> list[str]:
    pos, kv = _opts(args)
    n = int(pos[0])
    env.seed = int(kv.get("seed", "0"))
    ids = tuple(range(1, n + 1))
    voters = tuple(int(v) for v in kv["voters"].split(",")) if "voters" in kv else ids
    for i in ids:
        env.configs[i] = Config(i, voters, election_tick=10, heartbeat_tick=1,
                                max_entries_per_msg=int(kv.get("max-entries", "64")),
                                max_inflight=int(kv.get("max-inflight", "256")),
                                pre_vote=kv.get("prevote", "false") == "true",
                                check_quorum=kv.get("checkquorum", "false") == "true")
        env.storages[i] = MemoryStorage()
        env.cores[i] = RaftCore(env.configs[i], env.storages[i], random.Random(env.seed * 100 + i))
    return cmd_status(env, [])


def cmd_campaign(env: Env, args: list[str]) -> list[str]:
    env.core(int(args[0])).campaign()
    return []


def cmd_propose(env: Env, args: list[str]) -> list[str]:
    try:
        index = env.core(int(args[0])).propose(" ".join(args[1:]).encode())
    except NotLeader as e:
        return [f"NotLeader (hint: {e.leader_hint})"]
    return [f"index {index}"]


def cmd_tick_election(env: Env, args: list[str]) -> list[str]:
    """Tick until the node's (randomized) election timeout fires, or election_tick for a leader."""
    core = env.core(int(args[0]))
    n = core.config.election_tick if core.lead == core.id else (
        core.randomized_timeout - core.election_elapsed)
    for _ in range(max(n, 1)):
        core.tick()
    return []


def cmd_tick_heartbeat(env: Env, args: list[str]) -> list[str]:
    core = env.core(int(args[0]))
    for _ in range(core.config.heartbeat_tick):
        core.tick()
    return []


def cmd_process_ready(env: Env, args: list[str]) -> list[str]:
    out = []
    for nid in _ids(env, args):
        c = env.cores[nid]
        rd = c.ready() if c is not None else None
        if rd is not None:
            out.append(f"> {nid} handling Ready")
            out += env.handle_ready(nid, rd)
    return out


def cmd_deliver_msgs(env: Env, args: list[str]) -> list[str]:
    _, kv = _opts(args)

    def match(m: Message) -> bool:
        return (("from" not in kv or m.src == int(kv["from"])) and ("to" not in kv or m.dst == int(kv["to"]))
                and ("type" not in kv or m.type.value == kv["type"]))

    chosen = [m for m in env.network if match(m)]
    env.network = [m for m in env.network if not match(m)]
    if kv.get("keep") == "true":
        env.stash += chosen  # copies to replay later (duplicates / stale messages)
    if kv.get("reverse") == "true":
        chosen.reverse()
    return _deliver(env, chosen, drop=kv.get("drop") == "true")


def cmd_deliver_stash(env: Env, args: list[str]) -> list[str]:
    """Deliver the copies kept by ``deliver-msgs keep=true`` again (optionally reversed)."""
    _, kv = _opts(args)
    msgs = list(env.stash)
    if kv.get("keep") != "true":
        env.stash = []
    if kv.get("reverse") == "true":
        msgs.reverse()
    return _deliver(env, msgs, drop=False)


def _deliver(env: Env, msgs: list[Message], drop: bool) -> list[str]:
    out = []
    for m in msgs:
        if drop:
            out.append(f"dropped: {m.describe()}")
        elif env.cores[m.dst] is None or (m.src, m.dst) in env.blocked:
            out.append(f"lost: {m.describe()}")
        else:
            out.append(m.describe())
            env.core(m.dst).step(m)
    return out


def cmd_stabilize(env: Env, args: list[str]) -> list[str]:
    """Process Readys and deliver messages among ``ids`` until nothing is left to do."""
    ids = set(_ids(env, args))
    out: list[str] = []
    for _ in range(1000):
        step = cmd_process_ready(env, [str(i) for i in sorted(ids)])
        inside = [m.src in ids and m.dst in ids for m in env.network]
        msgs = [m for m, ok in zip(env.network, inside) if ok]
        env.network = [m for m, ok in zip(env.network, inside) if not ok]
        step += _deliver(env, msgs, drop=False)
        if not step:
            return out
        out += step
    raise RuntimeError("stabilize did not converge")


def cmd_compact(env: Env, args: list[str]) -> list[str]:
    """compact ID INDEX: snapshot node ID at INDEX (data = the applied entries' text)."""
    nid, index = int(args[0]), int(args[1])
    core = env.core(nid)
    data = ",".join(e.data.decode() for e in core.log.slice(1, index + 1) if e.data)
    prev = core.snapshot.data.decode() + "," if core.snapshot and core.snapshot.data else ""
    snap = core.compact(index, (prev + data).encode())
    env.storages[nid].compact(snap)
    return [f"snapshot {snap.term}/{snap.index} data={snap.data.decode()!r}"]


def cmd_transfer_leadership(env: Env, args: list[str]) -> list[str]:
    """transfer-leadership FROM TO"""
    env.core(int(args[0])).transfer_leadership(int(args[1]))
    return []


def cmd_propose_conf_change(env: Env, args: list[str]) -> list[str]:
    """propose-conf-change ID voters=1,2,3 [learners=4]"""
    _, kv = _opts(args[1:])

    def ids(key: str) -> list[int]:
        return [int(v) for v in kv[key].split(",")] if kv.get(key) else []

    try:
        index = env.core(int(args[0])).propose_conf_change(Membership.of(ids("voters"), ids("learners")))
    except (NotLeader, InvalidRequest) as e:
        return [f"{type(e).__name__}: {e}"]
    return [f"index {index}"]


def cmd_membership(env: Env, args: list[str]) -> list[str]:
    return [f"{nid}: {env.core(nid).membership.describe()}" for nid in _ids(env, args)
            if env.cores[nid] is not None]


def cmd_read_index(env: Env, args: list[str]) -> list[str]:
    """read-index ID CONTEXT"""
    try:
        env.core(int(args[0])).read_index(args[1].encode())
    except (NotLeader, NotReady) as e:
        return [f"{type(e).__name__}: {e}"]
    return []


def cmd_crash(env: Env, args: list[str]) -> list[str]:
    env.cores[int(args[0])] = None  # volatile state and any unprocessed Ready are gone
    return []


def cmd_restart(env: Env, args: list[str]) -> list[str]:
    nid = int(args[0])
    env.cores[nid] = RaftCore(env.configs[nid], env.storages[nid], random.Random(env.seed * 100 + nid + 50))
    return cmd_status(env, [str(nid)])


def cmd_partition(env: Env, args: list[str]) -> list[str]:
    groups, cur = [], []
    for a in [*args, "/"]:
        if a == "/":
            groups.append(set(cur))
            cur = []
        else:
            cur.append(int(a))
    env.blocked = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}
    return []


def cmd_heal(env: Env, args: list[str]) -> list[str]:
    env.blocked = set()
    return []


def cmd_status(env: Env, args: list[str]) -> list[str]:
    out = []
    for nid in _ids(env, args):
        c = env.cores[nid]
        if c is None:
            out.append(f"{nid}: down")
            continue
        out.append(f"{nid}: {c.role.value} term={c.term} vote={c.vote} lead={c.lead} "
                   f"commit={c.log.committed} applied={c.log.applied} last={c.log.last_index()}")
    return out


def cmd_progress(env: Env, args: list[str]) -> list[str]:
    """The leader's view of its followers."""
    c = env.core(int(args[0]))
    return [f"{p}: match={pr.match} next={pr.next} {pr.state.value} inflight={len(pr.inflight)}"
            for p, pr in sorted(c.prs.items()) if p != c.id] or ["not leader"]


def cmd_raft_log(env: Env, args: list[str]) -> list[str]:
    out = []
    for nid in _ids(env, args):
        c = env.core(nid)
        ents = " ".join(describe_entry(e).replace(" ", ":", 1) for e in c.log.entries)
        if c.log.offset:
            ents = f"snapshot:{c.log.offset_term}/{c.log.offset} " + ents
        out.append(f"{nid}: [{ents}] commit={c.log.committed}")
    return out


HANDLERS: dict[str, Callable[[Env, list[str]], list[str]]] = {
    name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}
