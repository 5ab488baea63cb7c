"""pytest-benchmark suites for the data path pieces: ring, parse, stamp, ordering.

    .venv/bin/python -m pytest benchmarks/test_bench_dataplane.py --benchmark-only

Each test puts packets per second (for one core) into ``extra_info["pps"]``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from deft.runtime.dataplane.frames import build_frame, vxlan_wrap
from deft.runtime.dataplane.ordering import OrderingUnit
from deft.runtime.dataplane.packet import PACKET_DTYPE, empty_batch
from deft.runtime.dataplane.parse import DROP_REASONS, STAGE_WIDTH, parse_into
from deft.runtime.dataplane.stamper import Stamper
from deft.runtime.ring import Ring, shm_name


def record_pps(benchmark, packets: int) -> None:
    benchmark.extra_info["pps"] = round(packets / benchmark.stats.stats.mean)


def traffic(n: int, flows: int = 64, size: int = 128) -> list[bytes]:
    out = []
    for i in range(n):
        f = i % flows
        payload = b"p" * (size - 42)
        out.append(vxlan_wrap(build_frame(0x0A000000 + f, 0xC6336401, 17, 1000 + f, 53, payload), 7))
    return out


@pytest.mark.parametrize("batch", [64, 256])
def test_ring_push_pop(benchmark, batch):
    name = shm_name(f"b{os.getpid()}", f"ring{batch}")
    ring = Ring.create(name, PACKET_DTYPE, 4096)
    records = empty_batch(batch)
    records["frame_len"] = 128

    def push_pop():
        ring.push_some(records)
        view = ring.peek(batch)
        ring.release(len(view))

    try:
        benchmark(push_pop)
        record_pps(benchmark, batch)
    finally:
        ring.close()


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_parse(benchmark, batch):
    stage = np.zeros((batch, STAGE_WIDTH), dtype=np.uint8)
    datagrams = traffic(batch)
    for i, d in enumerate(datagrams):
        stage[i, : len(d)] = np.frombuffer(d, np.uint8)
    lengths = np.array([len(d) for d in datagrams])
    out = empty_batch(batch)
    drops = np.zeros(len(DROP_REASONS), np.int64)
    benchmark(parse_into, stage, lengths, out, 1, drops)
    assert not drops.any()
    record_pps(benchmark, batch)


def parsed(batch: int, flows: int) -> np.ndarray:
    datagrams = traffic(batch, flows)
    stage = np.zeros((batch, STAGE_WIDTH), dtype=np.uint8)
    for i, d in enumerate(datagrams):
        stage[i, : len(d)] = np.frombuffer(d, np.uint8)
    out = empty_batch(batch)
    parse_into(stage, np.array([len(d) for d in datagrams]), out, 1, np.zeros(len(DROP_REASONS), np.int64))
    return out


@pytest.mark.parametrize("batch", [64, 256])
def test_stamp(benchmark, batch):
    records = parsed(batch, flows=500)
    stamper = Stamper(0)
    benchmark(stamper.stamp, records)
    record_pps(benchmark, batch)


@pytest.mark.parametrize("batch", [64, 256])
def test_ordering_in_order(benchmark, batch):
    records = empty_batch(batch)
    records["flow_id"] = np.arange(batch) % 32
    records["seq"] = np.arange(batch) // 32 + 1
    unit = OrderingUnit(PACKET_DTYPE, 2048)
    step = np.uint64(batch // 32)  # every flow has this many packets per batch

    def order():
        assert unit.order(records) is records  # the fast path: no copy
        records["seq"] += step

    benchmark(order)
    record_pps(benchmark, batch)


def test_ordering_reordered(benchmark):
    """Every batch arrives with each flow's packets reversed: the pending path."""
    batch = 64
    base = empty_batch(batch)
    base["flow_id"] = np.arange(batch) % 8
    base["seq"] = np.arange(batch) // 8 + 1
    reversed_ = base[np.lexsort((-base["seq"].astype(np.int64), base["flow_id"]))]
    unit = OrderingUnit(PACKET_DTYPE, 2048)
    state = {"round": 0}

    def order():
        r = reversed_.copy()
        r["seq"] += np.uint64(8 * state["round"])
        state["round"] += 1
        out = unit.order(r)
        assert len(out) == batch

    benchmark(order)
    record_pps(benchmark, batch)
