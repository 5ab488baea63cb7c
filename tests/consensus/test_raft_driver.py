"""RaftDriver over real ZeroMQ sockets on loopback: elect, commit, lose the leader, re-elect."""

import random
import time
from collections.abc import Iterator

import pytest
import zmq

from deft.runtime.consensus import (Config, Entry, EntryKind, MemoryStorage, Message, MsgType, NotLeader,
                                    RaftCore, Role, codec)
from deft.runtime.consensus.driver import RaftDriver

IDS = (1, 2, 3)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_cluster(ctx: zmq.Context, **driver_kw: float) -> tuple[dict[int, RaftDriver], dict[int, list[bytes]]]:
    applied: dict[int, list[bytes]] = {i: [] for i in IDS}
    drivers = {}
    for i in IDS:
        storage = MemoryStorage()
        core = RaftCore(Config(i, IDS, election_tick=10, heartbeat_tick=2), storage, random.Random(i))

        def apply(e: Entry, i: int = i) -> None:
            if e.kind is EntryKind.NORMAL:
                applied[i].append(e.data)

        drivers[i] = RaftDriver(core, storage, "tcp://127.0.0.1:*", apply,
                                restore=lambda s: None, tick_seconds=0.01, ctx=ctx, **driver_kw)
    endpoints = {i: d.endpoint for i, d in drivers.items()}
    for d in drivers.values():
        d.connect(endpoints)
    return drivers, applied


def run_until(drivers: dict[int, RaftDriver], cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        for d in drivers.values():
            d.run_once(max_wait=0.002)


def leader(drivers: dict[int, RaftDriver]) -> RaftDriver | None:
    ls = [d for d in drivers.values() if d.core.role is Role.LEADER]
    return ls[0] if len(ls) == 1 else None


def test_elect_commit_and_fail_over(ctx: zmq.Context) -> None:
    drivers, applied = make_cluster(ctx)
    try:
        run_until(drivers, lambda: leader(drivers) is not None)
        first = leader(drivers)
        assert first is not None
        first.propose(b"one")
        run_until(drivers, lambda: all(a == [b"one"] for a in applied.values()))
        follower = next(d for d in drivers.values() if d is not first)
        with pytest.raises(NotLeader):
            follower.propose(b"x")
        # The leader dies (sockets closed, no more ticks); the others elect a new one.
        first.close()
        rest = {i: d for i, d in drivers.items() if d is not first}
        run_until(rest, lambda: leader(rest) is not None)
        new = leader(rest)
        assert new is not None and new.core.term > first.core.term
        new.propose(b"two")
        run_until(rest, lambda: all(applied[i] == [b"one", b"two"] for i in rest))
    finally:
        for d in drivers.values():
            d.close()


def quiet_ticks(drivers: dict[int, RaftDriver]) -> None:
    """No more ticks (no heartbeats, no elections) during a test's exact ordering checks."""
    for d in drivers.values():
        d.tick_seconds = 3600.0
        d.next_tick = d.clock() + 3600.0


def quiet_leader(drivers: dict[int, RaftDriver]) -> RaftDriver:
    """Elect a leader and let the cluster go quiet; the leader."""
    run_until(drivers, lambda: leader(drivers) is not None)
    lead = leader(drivers)
    assert lead is not None
    settle(drivers)
    quiet_ticks(drivers)
    return lead


def warm_leader(drivers: dict[int, RaftDriver], applied: dict) -> RaftDriver:
    """Elect a leader, commit one entry everywhere, let the cluster go quiet; the leader."""
    lead = quiet_leader(drivers)
    lead.propose(b"warm")
    run_until(drivers, lambda: all(a == [b"warm"] for a in applied.values()))
    settle(drivers)
    quiet_ticks(drivers)
    return lead


def settle(drivers: dict[int, RaftDriver], rounds: int = 20) -> None:
    for _ in range(rounds):
        for d in drivers.values():
            d.run_once(max_wait=0.002)


def test_a_commit_is_applied_before_the_appends_that_spread_it(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader answers its client (applies) first, then tells the followers the new commit;
    and it applies as soon as the first ack commits the entry, before reading the second ack.
    A follower acks first, then applies. (No coalescing here: the commit goes out at once.)"""
    drivers, applied = make_cluster(ctx, coalesce_seconds=0)
    events: list[tuple[str, object]] = []
    encode, decode = codec.encode, codec.decode

    def logged_encode(m: Message) -> bytes:
        events.append(("send", m))
        return encode(m)

    def logged_decode(frame: bytes) -> Message:
        m = decode(frame)
        events.append(("recv", m))
        return m

    try:
        lead = warm_leader(drivers, applied)
        orig_apply = lead.apply
        lead.apply = lambda e: (events.append(("apply", e)), orig_apply(e))  # type: ignore[method-assign]
        monkeypatch.setattr(codec, "encode", logged_encode)
        monkeypatch.setattr(codec, "decode", logged_decode)
        index = lead.propose(b"x")
        followers = [d for d in drivers.values() if d is not lead]
        run_until({d.core.id: d for d in followers},
                  lambda: all(d.core.log.stable >= index for d in followers))
        time.sleep(0.05)  # both acks are now queued at the leader
        events.clear()
        lead.run_once(max_wait=0.05)
        kinds = [(k, getattr(x, "type", None)) for k, x in events]
        first_apply = next(i for i, (k, x) in enumerate(events)
                           if k == "apply" and x.data == b"x")  # type: ignore[attr-defined]
        acks = [i for i, (k, x) in enumerate(events) if k == "recv" and x.type is MsgType.APP_RESP
                and x.index >= index]  # type: ignore[attr-defined]
        spread = [i for i, (k, x) in enumerate(events) if k == "send" and x.type is MsgType.APP
                  and x.commit >= index]  # type: ignore[attr-defined]
        assert len(acks) == 2 and spread, kinds
        assert acks[0] < first_apply < acks[1], kinds  # the first ack commits: applied at once
        assert first_apply < min(spread), kinds
        # A follower: its ack goes out before it applies what the commit covers.
        fol = followers[0]
        fol_apply = fol.apply
        fol.apply = lambda e: (events.append(("apply", e)), fol_apply(e))  # type: ignore[method-assign]
        events.clear()
        run_until({fol.core.id: fol}, lambda: applied[fol.core.id][-1:] == [b"x"])
        ack = next(i for i, (k, x) in enumerate(events) if k == "send" and x.type is MsgType.APP_RESP)  # type: ignore[attr-defined]
        fol_applied = next(i for i, (k, x) in enumerate(events) if k == "apply")
        assert ack < fol_applied, [(k, getattr(x, "type", None)) for k, x in events]
    finally:
        for d in drivers.values():
            d.close()


def test_proposals_go_out_before_the_backlog_and_bad_frames_are_dropped(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    drivers, applied = make_cluster(ctx)
    events: list[str] = []
    encode = codec.encode
    wake_in, wake_out = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    wake_in.bind("inproc://wake")
    wake_out.connect("inproc://wake")
    junk = ctx.socket(zmq.DEALER)
    junk.linger = 0
    try:
        lead = quiet_leader(drivers)

        def on_wake() -> None:
            wake_in.recv()
            lead.propose(b"p")

        lead.watch(wake_in, on_wake)
        monkeypatch.setattr(codec, "encode", lambda m: (events.append(f"send {m.type.value}"), encode(m))[1])
        orig_on_frames = lead._on_frames
        monkeypatch.setattr(lead, "_on_frames", lambda f: (events.append("read backlog"), orig_on_frames(f)))
        junk.connect(lead.endpoint)
        junk.send_multipart([b"raft2", b"two frames"])   # not one frame: dropped
        junk.send(b"raft2 but not a message")            # one frame, undecodable: dropped
        time.sleep(0.1)
        wake_out.send(b"")
        time.sleep(0.02)
        lead.run_once(max_wait=0.05)
        assert events[:3] == ["send MsgApp", "send MsgApp", "read backlog"], events
        assert lead.dropped["bad_frames"] == 2
        run_until(drivers, lambda: all(a == [b"p"] for a in applied.values()))
    finally:
        for s in (wake_in, wake_out, junk):
            s.close(linger=0)
        for d in drivers.values():
            d.close()


def test_commit_only_appends_wait_for_the_next_proposal_or_coalesce_seconds(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append that only tells a follower the new commit is held up to ``coalesce_seconds``:
    the next proposal's append (which carries that commit too) replaces it; alone, it
    still goes out once the time is up, so idle followers learn the commit."""
    drivers, applied = make_cluster(ctx, coalesce_seconds=0.5)
    sent: list[Message] = []
    encode = codec.encode
    try:
        lead = warm_leader(drivers, applied)
        monkeypatch.setattr(codec, "encode", lambda m: (sent.append(m), encode(m))[1])
        followers = {d.core.id: d for d in drivers.values() if d is not lead}
        for k in range(5):  # one at a time, each as soon as the previous one is applied
            index = lead.propose(b"op%d" % k)
            run_until(drivers, lambda: applied[lead.core.id][-1:] == [b"op%d" % k])
            assert lead._held  # the commit for op k waits
        # Nothing but appends with entries (and their acks) was sent: no commit-only appends.
        apps = [m for m in sent if m.type is MsgType.APP and m.src == lead.core.id]
        assert apps and all(m.entries for m in apps), [m.describe() for m in apps]
        # Followers hold op0..op3 applied (carried by the next appends); op4's commit is held.
        assert all(applied[i][-1:] == [b"op3"] for i in followers)
        t = time.monotonic()
        run_until(drivers, lambda: all(applied[i][-1:] == [b"op4"] for i in followers), timeout=2.0)
        assert time.monotonic() - t < 1.5
        assert not lead._held
        assert [m.commit for m in sent if m.type is MsgType.APP and not m.entries] == [index, index]
    finally:
        for d in drivers.values():
            d.close()


def test_a_follower_that_forwarded_a_proposal_learns_its_commit_at_once(ctx: zmq.Context) -> None:
    """Its clients wait for it to apply the forwarded entry: no coalescing delay for it."""
    drivers, applied = make_cluster(ctx, coalesce_seconds=5.0)
    try:
        lead = quiet_leader(drivers)
        fol, other = [d for d in drivers.values() if d is not lead]
        t = time.monotonic()
        assert fol.propose_or_forward(b"fwd") is None
        run_until(drivers, lambda: applied[fol.core.id] == [b"fwd"], timeout=2.0)
        assert time.monotonic() - t < 1.0
        assert not lead._forwarded
        # The other follower, which forwarded nothing, still gets the commit only later.
        assert applied[other.core.id] == [] and other.core.id in lead._held
    finally:
        for d in drivers.values():
            d.close()


def record_saves(d: RaftDriver, log: list) -> None:  # type: ignore[type-arg]
    orig = d.storage.save

    def save(hs, entries, snapshot=None):  # type: ignore[no-untyped-def]
        log.append(("save", d.core.id, hs, len(entries)))
        orig(hs, entries, snapshot)

    d.storage.save = save  # type: ignore[method-assign]


def test_a_commit_index_alone_is_not_written_it_rides_with_the_next_entries(ctx: zmq.Context) -> None:
    """Commit is volatile: a Ready that only moves it costs no write (no fsync); the next write of
    entries carries it, and close writes what is left."""
    drivers, applied = make_cluster(ctx)
    try:
        lead = warm_leader(drivers, applied)
        saves: list = []  # type: ignore[type-arg]
        for d in drivers.values():
            record_saves(d, saves)
        lead.propose(b"a")
        run_until(drivers, lambda: all(a[-1:] == [b"a"] for a in applied.values()))
        settle(drivers)
        index_a = lead.core.log.last_index()
        assert saves and all(n > 0 for _, _, _, n in saves), saves   # entries only, no commit-only write
        saves.clear()
        lead.propose(b"b")
        run_until(drivers, lambda: all(a[-1:] == [b"b"] for a in applied.values()))
        settle(drivers)
        lead_saves = [(hs, n) for _, i, hs, n in saves if i == lead.core.id]
        assert lead_saves[0][1] == 1 and lead_saves[0][0] is not None and lead_saves[0][0].commit >= index_a
        assert all(n > 0 for _, _, _, n in saves), saves
        for d in drivers.values():
            d.close()
            assert d.storage.hard_state.commit == d.core.log.committed  # type: ignore[attr-defined]
    finally:
        for d in drivers.values():
            d.close()


@pytest.mark.parametrize("sends_first", [True, False])
def test_a_leader_sends_its_appends_before_writing_them_a_follower_acks_after(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch, sends_first: bool) -> None:
    drivers, applied = make_cluster(ctx, leader_sends_first=sends_first)
    events: list = []  # type: ignore[type-arg]
    encode = codec.encode
    try:
        lead = warm_leader(drivers, applied)
        for d in drivers.values():
            record_saves(d, events)
        monkeypatch.setattr(codec, "encode", lambda m: (events.append(("send", m.src, m.type, m)), encode(m))[1])
        events.clear()
        lead.propose(b"x")  # outside run_once: drained at once
        kinds = [(e[0], e[1], e[2] if e[0] == "send" else e[3]) for e in events]
        appends = [k for k, e in enumerate(events) if e[0] == "send" and e[2] is MsgType.APP and e[3].entries]
        write = next(k for k, e in enumerate(events) if e[0] == "save" and e[3] == 1)
        assert len(appends) == 2, kinds
        assert (max(appends) < write) if sends_first else (write < min(appends)), kinds
        events.clear()
        run_until(drivers, lambda: all(a[-1:] == [b"x"] for a in applied.values()))
        for fol in (d for d in drivers.values() if d is not lead):
            fid = fol.core.id
            written = next(k for k, e in enumerate(events) if e[0] == "save" and e[1] == fid and e[3] == 1)
            acked = next(k for k, e in enumerate(events) if e[0] == "send" and e[1] == fid
                         and e[2] is MsgType.APP_RESP)
            assert written < acked, events
    finally:
        for d in drivers.values():
            d.close()
