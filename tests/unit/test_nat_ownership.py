"""NAT ports move with their flows (nfs/nat.py, "Moved flows"): a seeded simulation of several pairs'
NATs under random flows, idle expiry and bucket moves back and forth (export, ``movable``,
``moved_out``, import, ``moved_in``, as runtime/worker/bucketmove.py does) checks after every step
that no port is held by two live flows, that no port is free at two pairs (or free at one and held
at another), and, once every flow has ended, that no port is lost: each is free at exactly one pair."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deft.nfs.base import Context, Params
from deft.nfs.nat import LENT, OWNED, SYNTHETIC, Nat

from .test_nf_nat import PUBLIC, S, Flows, client, run

PAIRS, BUCKETS, LO, HI = 3, 8, 20000, 20029          # 30 ports: 10 per pair, so pools run dry


def nats():
    out = []
    for i in range(PAIRS):
        nf = Nat(Params({"public_ip": PUBLIC, "port_range": [LO, HI], "idle_timeout_s": 10}), Context(i, PAIRS, seed=i))
        out.append((nf, nf.new_table(16)))
    return out


def bucket_of(flow_id: int) -> int:
    return flow_id % BUCKETS


def live_flows(table):
    rows = table.live_rows()
    real = rows[table.flow_ids[rows] < SYNTHETIC]
    return {int(table.flow_ids[r]): int(table.state["port"][r]) for r in real if table.state["port"][r]}


def free_ports(nf, table) -> set[int]:
    nf.rebuild(table)
    own = {nf.port_lo + k for k in np.flatnonzero(nf._free).tolist()}
    return own | set(nf._owned)


def check(pairs, all_ended: bool = False) -> None:
    held: dict[int, int] = {}
    for nf, table in pairs:
        for flow, port in live_flows(table).items():
            assert port not in held, f"port {port} held by flows {held[port]} and {flow}"
            held[port] = flow
    free_at: dict[int, int] = {}
    for k, (nf, table) in enumerate(pairs):
        for port in free_ports(nf, table):
            assert port not in free_at, f"port {port} free at pairs {free_at[port]} and {k}"
            assert port not in held, f"port {port} free at pair {k} and held by flow {held[port]}"
            free_at[port] = k
    if all_ended:
        assert sorted(free_at) == list(range(LO, HI + 1)), "ports lost: " + str(
            sorted(set(range(LO, HI + 1)) - set(free_at)))


def move(pairs, owner: list[int], buckets: set[int], to: int) -> None:
    """Every pair that has some of ``buckets`` hands them (flows, state) to pair ``to``."""
    for src in {owner[b] for b in buckets} - {to}:
        nf, table = pairs[src]
        mine = {b for b in buckets if owner[b] == src}
        rows = np.array([r for r in table.live_rows().tolist()
                         if table.flow_ids[r] < SYNTHETIC and bucket_of(int(table.flow_ids[r])) in mine], np.int64)
        rows = nf.movable(table, rows)
        exported = table.export_rows(rows)
        nf.moved_out(table, rows)
        tnf, ttable = pairs[to]
        ttable.import_records(exported)
        tnf.moved_in(ttable, np.array([ttable.row_of(f) for f in exported["flow_id"].tolist()], np.int64))
        for b in mine:
            owner[b] = to


@pytest.mark.parametrize("seed", range(30))
def test_ports_stay_unique_and_none_is_lost_through_moves_and_expiry(seed):
    rng = random.Random(seed)
    pairs = nats()
    owner = [b % PAIRS for b in range(BUCKETS)]
    flows = Flows()
    t = S
    for step in range(120):
        t += rng.choice([S // 10, S, 3 * S])                     # the NATs expire flows idle 10 s
        pkts = [(*client(rng.randrange(40)), 0x5DB8D822, 443, 6) for _ in range(rng.randrange(1, 12))]
        batch = flows.batch(pkts, ts=t)
        for p in range(PAIRS):                                   # each pair gets its buckets' packets
            part = batch[[owner[bucket_of(int(f))] == p for f in batch["flow_id"].tolist()]]
            if len(part):
                run(pairs[p][0], pairs[p][1], part)
        if rng.random() < 0.3:
            move(pairs, owner, set(rng.sample(range(BUCKETS), rng.randrange(1, 4))), rng.randrange(PAIRS))
        check(pairs)
    for nf, table in pairs:                                      # everything idles out (the NAT's own expiry)
        nf._expire(table, np.zeros(0, np.int64), t + 100 * S)
    check(pairs, all_ended=True)


def test_lent_and_owned_rows_stay_where_they_are():
    nf, table = nats()[0]
    rows, _ = table.rows_for(np.array([7, LENT | 20001, OWNED | 20025], np.uint64))
    assert nf.movable(table, rows).tolist() == [rows[0]]
