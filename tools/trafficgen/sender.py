"""Sending a PacketPlan to one UDP address: pacing against a monotonic schedule, the hot loop, SendLog."""

from __future__ import annotations

import bisect
import math
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

from deft.runtime.dataplane.udp_send import send_again
from deft.tools.progress import ProgressLine
from deft.tools.trafficgen.common import PROG, SOCKET_BUFFER_BYTES, U16, resolve_udp, set_buffer
from deft.tools.trafficgen.plan import PacketPlan
from deft.tools.trailer import TRAILER, TRAILER_MAGIC

MAX_BURST = 64             # packets per burst; bounds how far the sender runs ahead of the schedule

_U32 = struct.Struct("!I")


class _Schedule:
    """When packet i is due (ns after the start) and how many are due at a given time."""

    def __init__(self, total: int, rate: float, offsets_ns: np.ndarray | None = None):
        self.total = total
        self.rate = rate
        self.offsets = offsets_ns.tolist() if offsets_ns is not None else None

    def due(self, elapsed_ns: int) -> int:
        if self.offsets is not None:
            return bisect.bisect_right(self.offsets, elapsed_ns)
        if self.rate <= 0:
            return self.total
        return min(self.total, int(elapsed_ns * self.rate // 1_000_000_000) + 1)

    def at(self, i: int) -> int:
        if self.offsets is not None:
            return self.offsets[i]
        return math.ceil(i * 1_000_000_000 / self.rate) if self.rate > 0 else 0


@dataclass
class SendLog:
    """What the sender did: send time per packet id (0 = not sent: failed or cut by the duration)."""
    send_ns: np.ndarray
    start_ns: int
    end_ns: int
    attempted: int
    send_errors: int
    sndbuf_bytes: int = 0
    icmp_refused: int = 0


class TrafficSender:
    """Send a PacketPlan to one UDP address at a target rate.

    ``send(rate, duration_s)`` sends every packet of the plan in id order (or
    until the duration is over) and returns a SendLog; the per-packet work is
    two or three ``struct.pack_into`` calls, a checksum patch and ``send``.
    """

    def __init__(self, plan: PacketPlan, to: tuple[str, int], sndbuf: int = SOCKET_BUFFER_BYTES):
        self.plan = plan
        self.icmp_refused = 0  # sends that reported an earlier datagram's ICMP error (and were resent)
        family, addr = resolve_udp("--to", to[0], to[1])
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sndbuf_bytes = set_buffer(self._sock, socket.SO_SNDBUF, sndbuf)
            self._sock.connect(addr)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TrafficSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, rate: float = 0, duration_s: float | None = None, use_offsets: bool = False,
             progress: ProgressLine | None = None, first: int = 0, end: int | None = None) -> SendLog:
        """Send the plan; rate 0 = as fast as possible; ``use_offsets`` = the plan's own timing.

        ``first``/``end`` send only packets [first, end) (a run in phases); the log has
        a slot for every packet of the plan, 0 for those not sent by this call.
        """
        plan = self.plan
        total = plan.count if end is None else min(end, plan.count)
        offsets = None
        if use_offsets:
            offsets = plan.offsets_ns[first:total] - (plan.offsets_ns[first] if total > first else 0)
        schedule = _Schedule(total - first, rate, offsets)
        send_ns = np.zeros(plan.count, dtype=np.int64)
        log_view = memoryview(send_ns).cast("B").cast("q")  # memoryview stores are cheaper than numpy's
        now = time.monotonic_ns
        start = now()
        deadline = start + int(duration_s * 1e9) if duration_s else None
        sent, errors = first, 0
        while sent < total:
            t = now()
            if deadline is not None and t >= deadline:
                break
            due = first + schedule.due(t - start)
            if due > sent:
                upto = min(due, sent + MAX_BURST)
                errors += self._send_burst(sent, upto, log_view)
                sent = upto
            else:
                wake = start + schedule.at(sent - first)
                if deadline is not None:
                    wake = min(wake, deadline)
                time.sleep(max(0, wake - t) / 1e9)
            if progress is not None and progress.due(t):
                elapsed = max(t - start, 1) / 1e9
                progress.update(f"{PROG}: sent {sent}/{total}  {sent / elapsed:,.0f} pps  {elapsed:.1f} s", t)
        return SendLog(send_ns, start, now(), sent - first, errors, self.sndbuf_bytes, self.icmp_refused)

    def _send_burst(self, start: int, end: int, log_view: memoryview) -> int:
        """Send packets [start, end); return the number of failed sends. The hot loop."""
        templates = self.plan.templates
        tix = self.plan.pkt_template[start:end].tolist()
        seqs = self.plan.pkt_seqval[start:end].tolist()
        send = self._sock.send
        now = time.monotonic_ns
        pack_trailer = TRAILER.pack_into
        pack_u16 = U16.pack_into
        pack_u32 = _U32.pack_into
        magic = TRAILER_MAGIC
        errors = 0
        pid = start
        for t, sq in zip(tix, seqs):
            buf, csum_off, trailer_off, base, align, seq_off = templates[t]
            ts = now()
            if trailer_off:
                pack_trailer(buf, trailer_off, magic, pid, ts)
                if seq_off:
                    pack_u32(buf, seq_off, sq)
                # 0xFFFF - residue is never 0, so a UDP checksum never reads as "none"; for TCP a
                # residue of 0 gives 0xFFFF where a full computation gives 0 (one's-complement -0
                # and +0: both verify)
                pack_u16(buf, csum_off, 0xFFFF - (base + (pid + ts) * align + sq) % 0xFFFF)
            try:
                send(buf)
            except ConnectionRefusedError:  # an earlier datagram's ICMP, reported here: send this one again
                self.icmp_refused += 1
                if not send_again(send, buf):
                    errors += 1
                    ts = 0
            except OSError:  # ENOBUFS: the packet is not sent
                errors += 1
                ts = 0
            log_view[pid] = ts
            pid += 1
        return errors
