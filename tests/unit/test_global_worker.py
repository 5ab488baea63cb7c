"""A worker's global operations in-process (no child processes): the test plays the supervisor.

Held batches, results, the held input behind them, retries, garbage on the channel, the
replica's updates, the session slots a replay re-proposes, the in-process commit without
Raft; the supervisor side (WorkerChannel on a one-member Raft) and a follower forwarding
a proposal to its leader (MsgProp).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import time

import orjson
import pytest
import zmq

from deft.nfs.base import STALE
from deft.runtime.config import parse_config
from deft.runtime.consensus import Config, NotLeader, RaftCore
from deft.runtime.consensus.kv import Command, KVStateMachine, batch_entry, batch_results
from deft.runtime.consensus.messages import MsgType
from deft.runtime.consensus.storage_api import MemoryStorage
from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.packet import FORWARD, IPPROTO_UDP, PACKET_DTYPE
from deft.runtime.dataplane.parse import records_from_datagrams
from deft.runtime.config import RaftSection
from deft.runtime.node.globalstate import MAGIC, GlobalState, LocalState, WorkerChannel, worker_endpoints
from deft.runtime.params import ipv4_to_int
from deft.runtime.worker.pairslot import GLOBAL_WINDOW, session_of
from deft.runtime.worker.globals_client import GLOBAL_RETRY_S
from deft.runtime.worker.worker import Worker
from deft.runtime.ring import Ring
from deft.runtime.node.supervisor import Supervisor

SCANNER, CLIENT, VICTIM = ipv4_to_int("192.0.2.66"), ipv4_to_int("10.0.0.7"), ipv4_to_int("10.0.0.5")


class NeverStop:
    def __bool__(self) -> bool:
        return False


class FakeSupervisor:
    """The supervisor's end of the workers' channel, driven by the test; applies entries to a KV."""

    def __init__(self, zctx, node_id):
        req, pub = worker_endpoints(node_id)
        self.router = zctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.bind(req)
        self.pub = zctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind(pub)
        self.kv = KVStateMachine()
        self.paths = [req[6:], pub[6:]]

    def requests(self, n=1, timeout=2.0):
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            if self.router.poll(50):
                frames = self.router.recv_multipart()
                if frames[3] == b"B":
                    got.append(frames)
        return got

    def answer(self, frames):
        ident, req_id, entry = frames[0], frames[2], frames[6]
        result = self.kv.apply(entry)
        self.router.send_multipart([ident, MAGIC, req_id, orjson.dumps({"ok": True, "results": result})])
        return result

    def close(self):
        self.router.close(0)
        self.pub.close(0)
        for path in self.paths:
            if os.path.exists(path):
                os.unlink(path)


@pytest.fixture
def node(node_id, tmp_path):
    made, workers, rings, fakes = [], [], [], []

    def make(raft=True, **nf):
        raw = {"node": {"id": node_id}, "egress": {"send_to": "shm://out"},   # output stays in the ring
               "nf": {"kind": "portscan", "instances": 1, "flush_on_idle": False, "flush_us": 10_000_000, **nf,
                      "params": {"threshold": 3}}}
        if raft:
            raw["raft"] = {"id": 1, "members": {"1": "tcp://127.0.0.1:1"}, "data_dir": str(tmp_path / "r")}
        sup = Supervisor(parse_config(raw, "test.toml"), "test.toml", NeverStop(), logging.getLogger("t"))
        sup.create_shared()
        made.append(sup)
        fake = FakeSupervisor(sup.zctx, node_id)
        fakes.append(fake)
        worker = Worker(sup.topo, 0, NeverStop(), logging.getLogger("t"), restarted=False)
        workers.append(worker)
        feed = Ring.attach(sup.topo.nf_ring(0), PACKET_DTYPE)
        out = Ring.attach(sup.topo.egress_ring(0), PACKET_DTYPE)
        rings.extend([feed, out])
        return worker, feed, out, worker.slots[0], fake

    yield make
    for r in rings:
        r.close()
    for w in workers:
        w.close()
    for f in fakes:
        f.close()
    for sup in made:
        sup.zctx.term()
        sup.close_shared()


class Flows:
    def __init__(self):
        self.ids: dict[tuple, int] = {}
        self.seq: dict[int, int] = {}

    def batch(self, pkts, ts_ns=10**9):
        frames, ids = [], []
        for key in pkts:
            f = self.ids.setdefault(key, len(self.ids) + 1)
            ids.append(f)
            src, sport, dst, dport = key
            frames.append(vxlan_wrap(build_frame(src, dst, IPPROTO_UDP, sport, dport, b"x"), 1))
        recs, _ = records_from_datagrams(frames, ts_ns)
        recs["flow_id"] = ids
        seqs = []
        for f in ids:
            self.seq[f] = self.seq.get(f, 0) + 1
            seqs.append(self.seq[f])
        recs["seq"] = seqs
        recs["pair"] = 0
        return recs


def scan(flows, ports):
    return flows.batch([(SCANNER, 40000, VICTIM, p) for p in ports])


def settle(worker, until, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        worker.globals.poll()
        time.sleep(0.002)
    assert until()


def test_a_batch_with_global_ops_waits_for_its_results_and_later_input_waits_behind_it(node):
    worker, feed, out, slot, sup = node(batch_size=8)
    flows = Flows()
    feed.push_some(scan(flows, [1, 2]))
    worker.pull()
    feed.push_some(scan(flows, [3]))          # a second NF call into the same output buffer
    worker.pull()
    assert len(slot.ops) == 3 and len(slot.segments) == 2
    worker.release(slot)
    assert slot.waiting is not None and len(out) == 0          # held: nothing released before the commit
    assert not worker.should_release(slot, time.monotonic_ns() + 10**12)
    feed.push_some(scan(flows, [4, 5]))      # arrives meanwhile: held, not processed
    worker.pull()
    assert slot.held_n == 2 and slot.out.n == 0 and slot.count["received"] == 3

    (req,) = sup.requests()
    cmd = Command.decode(req[6])
    assert (req[4].decode(), int(req[5])) == (cmd.client, cmd.seq) == session_of(slot.session_name, 0)
    assert cmd.op == "multi" and [op for op, _, _ in cmd.args[0]] == ["add_to_window"] * 3
    assert sup.answer(req) == [1, 2, 3]
    settle(worker, lambda: slot.waiting is None)
    got = out.pop(10)
    assert got["verdict"].tolist() == [FORWARD] * 3 and worker.count["global_batches"] == 1
    # what was held went through the NF after the release, into the next batch (session slot 1)
    assert slot.out.n == 2 and slot.held_n == 0 and len(slot.ops) == 2
    worker.release(slot)
    (req,) = sup.requests()
    assert session_of(slot.session_name, 1) == (req[4].decode(), int(req[5]))
    assert sup.answer(req) == [4, 5]                           # over the threshold of 3
    settle(worker, lambda: slot.waiting is None)
    assert len(out) == 0 and worker.count["dropped_by_nf"] == 2
    assert sup.kv.data["portscan/192.0.2.66"].keys() == {f"10.0.0.5:{p}" for p in range(1, 6)}


def test_no_answer_is_retried_with_the_same_session_slot_and_applied_once(node):
    worker, feed, out, slot, sup = node(batch_size=8)
    flows = Flows()
    feed.push_some(scan(flows, [1, 2]))
    worker.pull()
    worker.release(slot)
    (first,) = sup.requests()
    worker.gclient.tick(time.monotonic() + 5)                    # the answer is overdue
    (again,) = sup.requests()
    assert worker.count["global_retries"] == 1 and again[2:] == first[2:]
    assert sup.answer(first) == [1, 2]
    assert sup.answer(again) == [1, 2]                           # dedup: the first results, nothing applied twice
    settle(worker, lambda: slot.waiting is None)
    assert len(out.pop(10)) == 2 and len(sup.kv.data["portscan/192.0.2.66"]) == 2
    # a refusal (no leader yet) is asked again soon, never dropped
    feed.push_some(scan(flows, [3]))
    worker.pull()
    worker.release(slot)
    (req,) = sup.requests()
    sup.router.send_multipart([req[0], MAGIC, req[2], orjson.dumps({"ok": False, "error": "no leader yet",
                                                                     "retry": True})])
    settle(worker, lambda: worker.gclient.requests[req[2]].retry_at < time.monotonic() + GLOBAL_RETRY_S / 2)
    worker.gclient.tick(time.monotonic() + 0.1)
    (again,) = sup.requests()
    sup.answer(again)
    settle(worker, lambda: slot.waiting is None)
    assert len(out.pop(10)) == 1


def test_garbage_on_the_channel_is_counted_and_ignored_and_the_replica_follows_the_pub(node):
    worker, feed, out, slot, sup = node(batch_size=8)
    ident = None
    flows = Flows()
    feed.push_some(scan(flows, [1]))
    worker.pull()
    worker.release(slot)
    (req,) = sup.requests()
    ident = req[0]
    for junk in ([b"x"], [MAGIC, b"1", b"not json"], [MAGIC, req[2], b"[1, 2]"], [b"\xff" * 3, b"", b"", b""]):
        sup.router.send_multipart([ident, *junk])
    time.sleep(0.05)
    worker.globals.poll()
    assert worker.count["global_bad_frames"] == 4 and slot.waiting is not None
    sup.answer(req)
    settle(worker, lambda: slot.waiting is None)
    assert len(out.pop(10)) == 1
    # the PUB: garbage counted, changes reach ctx.globals.local
    deadline = time.monotonic() + 2
    while slot.ctx.globals.local("k") != 7 and time.monotonic() < deadline:
        sup.pub.send(b"garbage")
        sup.pub.send(orjson.dumps({"k": 7}))
        time.sleep(0.02)
        worker.globals.poll()
    assert slot.ctx.globals.local("k") == 7 and worker.count["global_bad_frames"] > 4
    with pytest.raises(TypeError):
        slot.ctx.globals.replica["k"] = 8  # read-only for the NF


def test_replica_updates_wake_an_idle_worker_and_ride_with_the_answers_of_a_busy_one(node):
    """The PUB of applied changes: a worker with an entry in flight does not wake for them (they come in
    with its answer); one without sleeps on them, so its replica never falls behind for long."""
    worker, feed, out, slot, sup = node(batch_size=8)
    deadline = time.monotonic() + 2
    while slot.ctx.globals.local("k") != 1:        # idle: the update wakes it (the SUB may still be joining)
        assert time.monotonic() < deadline, "an idle worker never heard the replica's update"
        sup.pub.send(orjson.dumps({"k": 1}))
        if worker.gclient.sub in worker.wait(50):
            worker.on_ready({worker.gclient.sub})
    feed.push_some(scan(Flows(), [1]))
    worker.pull()
    worker.release(slot)
    (req,) = sup.requests()
    sup.pub.send(orjson.dumps({"k": 2}))
    time.sleep(0.05)
    t0 = time.monotonic()
    assert worker.gclient.sub not in worker.wait(100)  # busy: slept through it
    assert time.monotonic() - t0 >= 0.09 and slot.ctx.globals.local("k") == 1
    sup.answer(req)
    settle(worker, lambda: slot.waiting is None)       # the answer's round takes the update too
    assert slot.ctx.globals.local("k") == 2


def test_replica_updates_go_out_at_once_after_a_quiet_spell_and_merged_while_entries_keep_coming(node_id):
    """The supervisor's PUB of applied changes: the first after a quiet spell at once, the ones within
    PUBLISH_EVERY_NS of it merged (the newest value of each key) into one message when it has passed."""
    from deft.runtime.node.globalstate import PUBLISH_EVERY_NS

    zctx = zmq.Context()
    channel = WorkerChannel(LocalState(), zctx, node_id)
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(channel.endpoints[1])
    try:
        time.sleep(0.1)                                   # the subscription reaches the PUB
        assert channel.flush_due_ms() is None
        channel.publish({"a": 1})
        assert sub.poll(1000) and orjson.loads(sub.recv()) == {"a": 1}
        channel.publish({"a": 2, "b": 1})
        channel.publish({"a": 3})
        assert not sub.poll(0) and 0 < channel.flush_due_ms() <= PUBLISH_EVERY_NS / 1e6
        channel.flush()                                   # not due yet: nothing
        assert not sub.poll(10)                           # nor later, until someone flushes
        time.sleep(channel.flush_due_ms() / 1000)
        channel.flush()
        assert sub.poll(1000) and orjson.loads(sub.recv()) == {"a": 3, "b": 1}
        assert channel.flush_due_ms() is None and channel.counts["published"] == 2
    finally:
        sub.close(0)
        channel.close()
        zctx.term()


def test_a_replay_re_proposes_the_original_session_slot_and_gets_the_first_results():
    """The claim behind take-over replays: batch t's entry is (prefix/t%W, t//W+1); proposed again
    after the batches in flight with it (t+1 .. t+W-1) were applied, it returns its first results and
    changes nothing; only an entry W batches later (which a window of W cannot have in flight
    together with t) makes it STALE."""
    kv = KVStateMachine()
    ops = {t: [["add_to_window", "portscan/a", [f"d:{t}", 100 + t, 10**12]], ["incr", "n", [1]]] for t in range(9)}
    first = {}
    for t in range(4):
        first[t] = kv.apply(batch_entry(*session_of("pair3/e7", t), ops[t]))
    snapshot = kv.snapshot()
    for t in range(4):                                  # the take-over replays all four in doubt
        assert kv.apply(batch_entry(*session_of("pair3/e7", t), ops[t])) == first[t]
    assert kv.snapshot() == snapshot and kv.data["n"] == 4
    kv.apply(batch_entry(*session_of("pair3/e7", 4), ops[4]))      # W later, same client as batch 0
    assert batch_results(kv.apply(batch_entry(*session_of("pair3/e7", 0), ops[0])), 2) == [STALE, STALE]
    assert session_of("p", GLOBAL_WINDOW) == ("p/0", 2)
    # a new primary (another 2PC epoch) never lands in the old primary's slots
    assert kv.apply(batch_entry(*session_of("pair3/e8", 0), ops[5]))[1] == 6


def test_without_raft_the_node_shares_one_in_process_state(node, node_id):
    """No [raft]: the worker goes the same way, to its supervisor, which applies at once (LocalState)."""
    worker, feed, out, slot, fake = node(raft=False, batch_size=8)
    assert worker.gclient is not None and slot.commit_now is None
    fake.close()
    zctx = zmq.Context()
    channel = WorkerChannel(LocalState(), zctx, node_id)
    try:
        flows = Flows()
        for ports, back in (([1, 2, 3], 3), ([4, 5], 0)):        # 5 pairs: over the threshold of 3
            feed.push_some(scan(flows, ports))
            worker.pull()
            worker.release(slot)
            assert slot.waiting is not None
            deadline = time.monotonic() + 2
            while slot.waiting is not None and time.monotonic() < deadline:
                if channel.sock.poll(5):
                    channel.handle_all()
                worker.globals.poll()
            assert len(out.pop(10)) == back
        assert channel.gs.kv.data["portscan/192.0.2.66"].keys() == {f"10.0.0.5:{p}" for p in range(1, 6)}
        settle(worker, lambda: len(slot.ctx.globals.local("portscan/192.0.2.66") or {}) == 5)   # the PUB
    finally:
        channel.close()
        zctx.term()


def test_the_supervisor_channel_counts_garbage_and_answers_when_applied(tmp_path, node_id):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    zctx = zmq.Context()
    gs = GlobalState(RaftSection(1, {1: endpoint}, str(tmp_path / "raft"), False, 5), node_id, zctx)
    channel = WorkerChannel(gs, zctx, node_id)
    gs.driver.watch(channel.sock, channel.handle_all)
    dealer = zctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(channel.endpoints[0])
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(channel.endpoints[1])
    try:
        entry = batch_entry("pair0/x/0", 1, [["incr", "k", [2]]])
        for junk in ([b"x"], [MAGIC, b"1", b"B", b"c", b"notanint", entry], [MAGIC, b"1", b"Z"],
                     [MAGIC, b"1", b"B", b"other", b"1", entry],
                     [MAGIC, b"1", b"B", b"c", b"1", b'{"c":"c","s":1,"o":"multi","k":"","a":[[["incr"]]]}']):
            dealer.send_multipart(junk)
        dealer.send_multipart([MAGIC, b"ok", b"B", b"pair0/x/0", b"1", entry])
        deadline = time.monotonic() + 5
        replies = []
        while time.monotonic() < deadline:
            gs.driver.run_once(0.01)
            while dealer.poll(0):
                replies.append(dealer.recv_multipart())
            if any(orjson.loads(r[2]).get("results") for r in replies):
                break
            if replies:  # refused before the election: the worker would retry
                dealer.send_multipart([MAGIC, b"ok", b"B", b"pair0/x/0", b"1", entry])
                replies.clear()
        assert channel.counts["bad_frames"] == 5
        assert [orjson.loads(r[2])["results"] for r in replies if r[1] == b"ok"][-1] == [2]
        assert sub.poll(1000) and orjson.loads(sub.recv()) == {"k": 2}
        assert gs.status()["workers"]["bad_frames"] == 5
    finally:
        dealer.close(0)
        sub.close(0)
        channel.close()
        gs.close()
        zctx.term()


def _deliver(cores, rounds=50):
    for _ in range(rounds):
        moved = False
        for core in cores.values():
            while (rd := core.ready()) is not None:
                core._test_storage.save(rd.hard_state, rd.entries, rd.snapshot)
                for m in rd.messages:
                    moved = True
                    cores[m.dst].step(m)
                for e in rd.committed:
                    core._test_applied.append(e.data)
                core.advance(rd)
        if not moved:
            return


def test_a_follower_forwards_a_proposal_to_its_leader():
    cores = {}
    for n in (1, 2, 3):
        storage = MemoryStorage()
        core = RaftCore(Config(n, (1, 2, 3)), storage, random.Random(n))
        core._test_storage, core._test_applied = storage, []
        cores[n] = core
    cores[1].campaign()
    _deliver(cores)
    for _ in range(3):
        for c in cores.values():
            c.tick()
        _deliver(cores)
    assert cores[1].role.value == "leader"
    with pytest.raises(NotLeader):
        cores[2].propose(b"x")                        # propose itself still refuses
    assert cores[2].propose_or_forward(b"from-2") is None
    (msg,) = [m for m in cores[2].msgs if m.type is MsgType.PROP]
    assert msg.dst == 1
    _deliver(cores)
    for c in cores.values():                          # applied once, everywhere
        assert c._test_applied.count(b"from-2") == 1
    assert isinstance(cores[1].propose_or_forward(b"on-leader"), int)
    cand = RaftCore(Config(4, (4,)), MemoryStorage(), random.Random(4))
    with pytest.raises(NotLeader):                    # no leader known: refused, the client retries
        cand.propose_or_forward(b"y")
    _deliver(cores)
    assert cores[3]._test_applied.count(b"on-leader") == 1


def test_the_raft_log_is_compacted_every_snapshot_every_entries_and_a_restart_starts_from_the_snapshot(
        tmp_path, node_id):
    """Without compaction the log (on disk and in DiskStorage's memory) grows with every batch."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    section = RaftSection(1, {1: endpoint}, str(tmp_path / "raft"), False, 5, snapshot_every=20)
    zctx = zmq.Context()
    gs = GlobalState(section, node_id, zctx)
    try:
        deadline = time.monotonic() + 5
        while gs.core.role.value != "leader" and time.monotonic() < deadline:
            gs.driver.run_once(0.01)
        answers = []
        for n in range(1, 51):
            gs.propose_entry(f"w/{n % 4}", n // 4 + 1, batch_entry(f"w/{n % 4}", n // 4 + 1, [["incr", "k", [1]]]),
                             answers.append)
            gs.driver.run_once(0.001)
            compacted = gs.maybe_compact()
            assert not compacted or gs.status()["snapshot"] == gs.core.log.applied
        while len(answers) < 50 and time.monotonic() < deadline:
            gs.driver.run_once(0.01)
        gs.maybe_compact()
        assert gs.kv.data["k"] == 50 and gs.status()["snapshot"] >= 40
        assert len(gs.storage.load()[2]) < 20                 # what is left of the log after the snapshot
        digest = gs.status()["digest"]
    finally:
        gs.close()
    port = socket.socket()     # a new port: the old one's close completes asynchronously in zmq
    port.bind(("127.0.0.1", 0))
    section = dataclasses.replace(section, members={1: f"tcp://127.0.0.1:{port.getsockname()[1]}"})
    port.close()
    again = GlobalState(section, node_id, zctx)               # from the snapshot plus the rest of the log
    try:
        deadline = time.monotonic() + 5
        while again.core.log.applied < again.core.log.committed or again.core.role.value != "leader":
            again.driver.run_once(0.01)
            assert time.monotonic() < deadline
        assert again.kv.data["k"] == 50 and again.status()["digest"] == digest
    finally:
        again.close()
        zctx.term()
