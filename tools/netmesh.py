"""Hosts in network namespaces joined by links that can be cut: partitions for tests (root only).

Every host is a namespace with one address, ``10.77.<net>.<k>`` on its
loopback interface, and every two hosts that should talk get their own veth pair with
a /32 route to the other's address over it, and nothing else: no default
route and no forwarding, so cutting a link (``cut``: both ends down) parts
exactly those two hosts, and ``heal`` joins them again. The root namespace
(where the test runs) reaches every host over a management link that is
never cut. ``run`` starts a process inside a host (``ip netns exec``; the
process is the one ``ip`` execs, so it is stopped by its PID).

``close`` deletes the namespaces (and with them every veth); a mesh left by
a killed run is swept at the next start (``sweep``: namespaces named
``deftmesh<pid>-...`` whose pid is gone).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time

PREFIX = "deftmesh"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def sweep() -> list[str]:
    """Delete namespaces of meshes whose test process is gone; their names."""
    gone = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class Mesh:
    def __init__(self, hosts: list[str], links: list[tuple[str, str]] | None = None, net: int = 0):
        """``hosts``: names (short: they name interfaces); ``links``: the host pairs joined (default: all);
        ``net``: the third byte of the addresses (two meshes at once need two nets)."""
        sweep()
        self.hosts = list(hosts)
        self.ns = {h: f"{PREFIX}{os.getpid()}-{h}" for h in hosts}
        self.addr = {h: f"10.77.{net}.{k + 1}" for k, h in enumerate(hosts)}
        self.links = list(links if links is not None else itertools.combinations(hosts, 2))
        self.net = net
        self.root_devs: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _dev(self, a: str, b: str) -> str:
        """The interface in ``a`` that leads to ``b`` (15 characters at most)."""
        return f"m{self.hosts.index(a)}{self.hosts.index(b)}{self.net}{os.getpid() % 100000}"[:15]

    def _build(self) -> None:
        for h in self.hosts:
            ip("netns", "add", self.ns[h])
            ip("-n", self.ns[h], "link", "set", "lo", "up")
            ip("-n", self.ns[h], "addr", "add", f"{self.addr[h]}/32", "dev", "lo")   # (no dummy module here)
        for a, b in self.links:
            da, db = self._dev(a, b), self._dev(b, a)
            ip("link", "add", da, "netns", self.ns[a], "type", "veth", "peer", "name", db, "netns", self.ns[b])
            self._up(a, b)
        # management: the root namespace reaches every host (10.78.<net>.<4k>/30 per host), never cut
        for k, h in enumerate(self.hosts):
            root_dev, host_dev = f"r{k}{self.net}{os.getpid() % 100000}"[:15], "mgmt0"
            root_ip, host_ip = f"10.78.{self.net}.{4 * k + 1}", f"10.78.{self.net}.{4 * k + 2}"
            ip("link", "add", root_dev, "type", "veth", "peer", "name", host_dev, "netns", self.ns[h])
            self.root_devs.append(root_dev)
            ip("addr", "add", f"{root_ip}/30", "dev", root_dev)
            ip("link", "set", root_dev, "up")
            ip("-n", self.ns[h], "addr", "add", f"{host_ip}/30", "dev", host_dev)
            ip("-n", self.ns[h], "link", "set", host_dev, "up")
            ip("route", "replace", f"{self.addr[h]}/32", "via", host_ip, "dev", root_dev)

    def _up(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            ip("-n", self.ns[x], "link", "set", self._dev(x, y), "up")
        for x, y in ((a, b), (b, a)):   # a route over a link that was down is gone: put it back
            ip("-n", self.ns[x], "route", "replace", f"{self.addr[y]}/32", "dev", self._dev(x, y),
               "src", self.addr[x])

    def cut(self, a: str, b: str) -> None:
        """Part ``a`` and ``b``: their link down at both ends."""
        for x, y in ((a, b), (b, a)):
            ip("-n", self.ns[x], "link", "set", self._dev(x, y), "down")

    def isolate(self, a: str) -> list[tuple[str, str]]:
        """Cut every link of ``a``; the links cut (for ``heal``)."""
        cut = [(x, y) for x, y in self.links if a in (x, y)]
        for x, y in cut:
            self.cut(x, y)
        return cut

    def heal(self, a: str, b: str) -> None:
        self._up(a, b)

    def run(self, host: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` inside ``host``."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns[host], *argv], **popen)

    def wrap(self, host: str) -> list[str]:
        """The command prefix that runs a program inside ``host``."""
        return ["ip", "netns", "exec", self.ns[host]]

    def close(self) -> None:
        for dev in self.root_devs:   # the root namespace's ends (and their routes) go at once
            ip("link", "del", dev, check=False)
        for h in self.hosts:
            ip("netns", "del", self.ns[h], check=False)
        # veth pairs die with their namespace, asynchronously: wait, so the next mesh can reuse names
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                f"{PREFIX}{os.getpid()}-" in line for line in ip("netns", "list").stdout.splitlines()):
            time.sleep(0.05)
