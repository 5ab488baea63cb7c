"""loadbalancer: Maglev consistent hashing with per-flow sticky backends.

Synopsis
    A flow's first packet picks a backend through a Maglev lookup table
    (Eisenbud et al., NSDI 2016); the choice is kept in the flow's state, so the
    flow stays on its backend for its whole life, even after the backend list
    changes (``set_backends``). Packets in the initiator direction get their
    destination address (and port, if the backend names one) rewritten, with
    checksums fixed incrementally. Reverse packets are forwarded unchanged: with
    symmetric flow keys they carry the client/VIP addresses, not the backend's.

Params ([nf.params])
    backends    required, list of "ip" or "ip:port" strings ("ip" keeps the
                packet's destination port)
    table_size  Maglev lookup table size, a prime larger than the number of
                backends; default 65537 (the paper's small table size)

State (per flow)
    backend_ip    chosen backend address (0: none chosen yet)
    backend_port  chosen backend port (0: keep the packet's port)
    init_dir      direction of the flow's first packet (the one rewritten)

Counters
    new_flows   flows assigned a backend
    rewritten   packets rewritten towards their backend

Example
    [nf]
    kind = "loadbalancer"
    [nf.params]
    backends = ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3"]
    table_size = 65537

Determinism: the lookup table depends only on the backend list (names hashed
with BLAKE2b, not Python's per-process ``hash``), and a flow's slot only on its
5-tuple hash, so every instance, primary or secondary, picks alike.
"""

from __future__ import annotations

import hashlib

import numpy as np

from deft.nfs.base import Context, NetworkFunction, Params, ipv4_to_int
from deft.nfs.checksum import rewrite_endpoint

_MAX_TABLE = 1 << 24


class LoadBalancer(NetworkFunction):
    name = "loadbalancer"
    state_dtype = np.dtype([("backend_ip", "<u4"), ("backend_port", "<u2"), ("init_dir", "u1")])
    counters = ("new_flows", "rewritten")

    def __init__(self, params: Params, ctx: Context):
        super().__init__(params, ctx)
        self._params = params
        self.table_size = params.int("table_size", 65537, min=2, max=_MAX_TABLE)
        if not _is_prime(self.table_size):
            raise params.error("table_size", f"must be a prime, got {self.table_size}")
        self.set_backends(params.list("backends"), key="backends")

    def set_backends(self, backends: list, key: str = "backends") -> None:
        """Replace the backend list and rebuild the Maglev table (existing flows keep theirs)."""
        parsed = [_parse_backend(self._params, f"{key}[{i}]", b) for i, b in enumerate(backends)]
        if not parsed:
            raise self._params.error(key, "needs at least one backend")
        if len(set(parsed)) != len(parsed):
            raise self._params.error(key, "lists a backend twice")
        if len(parsed) >= self.table_size:
            raise self._params.error(key, f"{len(parsed)} backends need table_size > {len(parsed)}")
        self.backends = list(backends)
        self._ip = np.array([ip for ip, _ in parsed], np.uint32)
        self._port = np.array([port for _, port in parsed], np.uint16)
        self.lookup = maglev_table([str(b) for b in backends], self.table_size)

    def process(self, batch, rows, new_rows, table, ctx):
        st = table.state
        bip = st["backend_ip"][rows]
        need = bip == 0
        if need.any():
            self._assign(batch, rows, np.flatnonzero(need), st)
            bip = st["backend_ip"][rows]
        idx = np.flatnonzero(batch["direction"] == st["init_dir"][rows])
        if len(idx):
            r = rows[idx]
            rewrite_endpoint(batch, idx, "dst", bip[idx], st["backend_port"][r])
            self.stats["rewritten"] += len(idx)
        verdict = np.zeros(len(batch), np.uint8)
        batch["verdict"] = verdict
        return verdict

    def _assign(self, batch, rows, need_idx, st) -> None:
        """Pick backends for flows without one, from each flow's first packet in the batch."""
        uniq, first = np.unique(rows[need_idx], return_index=True)
        pkt = need_idx[first]
        b = self.lookup[flow_slot(batch["key_hash"][pkt], self.table_size)]
        st["backend_ip"][uniq] = self._ip[b]
        st["backend_port"][uniq] = self._port[b]
        st["init_dir"][uniq] = batch["direction"][pkt]
        self.stats["new_flows"] += len(uniq)


def flow_slot(key_hash: np.ndarray, size: int) -> np.ndarray:
    """Lookup table slot of flows by their 5-tuple hash.

    The hash is remixed first (a multiply-xorshift) so the slot is independent
    of the bits that already chose the flow's bucket and instance.
    """
    with np.errstate(over="ignore"):
        z = key_hash.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(29)
    return (z % np.uint64(size)).astype(np.int64)


def maglev_table(names: list[str], size: int) -> np.ndarray:
    """Maglev lookup table (paper Sec. 3.4, Pseudocode 1): slot -> backend index.

    Backend i walks its own permutation ``(offset_i + j * skip_i) mod size`` and,
    in turns, takes the next slot not yet taken; so every backend gets
    size/N slots (+-1), and removing one backend moves few other slots.
    """
    n = len(names)
    offset, skip = [], []
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        offset.append(int.from_bytes(digest[:8], "little") % size)
        skip.append(int.from_bytes(digest[8:], "little") % (size - 1) + 1)
    entry = [-1] * size
    nxt = [0] * n
    filled = 0
    # Plain Python on lists: this runs once per backend change, and the loop is
    # inherently sequential (each pick depends on all earlier ones).
    while True:
        for i in range(n):
            c = (offset[i] + nxt[i] * skip[i]) % size
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % size
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == size:
                return np.array(entry, np.int64)


def _parse_backend(params: Params, key: str, value) -> tuple[int, int]:
    if not isinstance(value, str):
        raise params.error(key, f'expected "ip" or "ip:port", got {value!r}')
    host, sep, port_text = value.partition(":")
    try:
        ip = ipv4_to_int(host)
    except ValueError:
        raise params.error(key, f"expected an IPv4 address, got {host!r}") from None
    if ip == 0:
        raise params.error(key, "0.0.0.0 is not a backend")
    port = 0
    if sep:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise params.error(key, f"port must be 1..65535, got {port_text!r}")
        port = int(port_text)
    return ip, port


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True

