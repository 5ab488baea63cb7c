"""Shared-memory ring throughput between two processes, in batches.

    .venv/bin/python benchmarks/ring_throughput.py [--seconds 3] [--batch 64]

A producer process pushes batches of packet records (header + frame bytes
in use) as fast as the ring takes them; the consumer (this process) peeks,
checks the sequence numbers and releases. Prints records/s and GB/s for
several frame sizes, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np

from deft.runtime.dataplane.packet import HEADER_SIZE, PACKET_DTYPE, empty_batch
from deft.runtime.ring import Ring, cleanup_node, shm_name

NODE = f"bench{os.getpid()}"


def producer(name: str, batch: int, frame_len: int, seconds: float) -> None:
    ring = Ring.attach(name, PACKET_DTYPE)
    records = empty_batch(batch)
    records["frame_len"] = frame_len
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            records["seq"] = np.arange(seq, seq + batch)
            seq += ring.push_some(records)  # a partial push keeps seq right: the rest is resent
    records["seq"] = np.iinfo(np.uint64).max  # end marker
    while ring.push_some(records[:1]) == 0:
        pass
    ring.close()


def measure(batch: int, frame_len: int, seconds: float) -> tuple[float, bool]:
    name = shm_name(NODE, f"r{frame_len}")
    ring = Ring.create(name, PACKET_DTYPE, 4096)
    proc = multiprocessing.get_context("spawn").Process(target=producer, args=(name, batch, frame_len, seconds))
    proc.start()
    expected = 0
    ok = True
    start = None
    done = False
    while not done:
        view = ring.peek(batch)
        n = len(view)
        if n == 0:
            continue
        if start is None:
            start = time.perf_counter()
        seqs = view["seq"]
        if seqs[-1] == np.iinfo(np.uint64).max:
            n -= 1
            done = True
        ok &= n == 0 or (int(seqs[0]) == expected and int(seqs[n - 1]) == expected + n - 1)
        expected += n
        ring.release(len(view))
    elapsed = time.perf_counter() - start
    proc.join()
    ring.close()
    return expected / elapsed, ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"ring throughput between two processes, batches of {args.batch}, {args.seconds:.0f} s each")
    try:
        for frame_len in (64, 128, 512, 1518):
            rate, ok = measure(args.batch, frame_len, args.seconds)
            gbps = rate * (HEADER_SIZE + frame_len) / 1e9
            print(f"  frame {frame_len:5d} B: {rate / 1e6:6.2f} M records/s  {gbps:5.2f} GB/s  order {'ok' if ok else 'BROKEN'}")
    finally:
        cleanup_node(NODE)


if __name__ == "__main__":
    main()
