"""The moment a node's supervisor dies: a socket monitor on a connection to its control endpoint.

Heartbeats tell a node is gone only after ``heartbeat_ms x miss_limit`` of
silence. But a process that dies (SIGKILL, a crash, the machine's OOM killer)
has its sockets closed by the kernel at once, and the peer of a TCP connection
sees that in about a millisecond. So the controller keeps one idle DEALER
connected to every node's control ROUTER and watches its monitor: a
``DISCONNECTED`` event names the endpoint, and so the node, whose supervisor
is gone. The node is then declared failed at once (``ClusterView.on_disconnect``);
heartbeats still catch what closes no socket (a stalled process, a cut link).

A node that only lost the connection (a broken network path, not a dead
process) beats again and is counted as a false suspicion, as after a late beat.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import parse_monitor_message

from deft.runtime.sockets import make_socket

WATCHED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


class LivenessWatch:
    def __init__(self, ctx: zmq.Context):
        self.ctx = ctx
        self.watched: dict[str, tuple[str, zmq.Socket, zmq.Socket]] = {}   # node -> (endpoint, dealer, monitor)
        self.connected: set[str] = set()
        self.retired: list[tuple[str, zmq.Socket, zmq.Socket]] = []

    def watch(self, node: str, endpoint: str) -> tuple[zmq.Socket | None, zmq.Socket | None]:
        """Watch ``node`` at ``endpoint`` (again, if it moved): (a new monitor socket to poll, the
        old one to stop polling before ``close_retired``)."""
        current = self.watched.get(node)
        if current is not None and current[0] == endpoint:
            return None, None
        old = self._retire(node)
        dealer = make_socket(self.ctx, zmq.DEALER, hwm=1)
        monitor = dealer.get_monitor_socket(WATCHED)
        dealer.connect(endpoint)
        self.watched[node] = (endpoint, dealer, monitor)
        return monitor, old

    def _retire(self, node: str) -> zmq.Socket | None:
        entry = self.watched.pop(node, None)
        self.connected.discard(node)
        if entry is None:
            return None
        self.retired.append(entry)
        return entry[2]

    def close_retired(self) -> None:
        for _, dealer, monitor in self.retired:
            dealer.disable_monitor()
            monitor.close(linger=0)
            dealer.close(linger=0)
        self.retired.clear()

    def monitors(self) -> list[zmq.Socket]:
        return [m for _, _, m in self.watched.values()]

    def events(self, ready) -> list[str]:
        """Nodes whose connection just closed, after having been open (from the monitors in ``ready``)."""
        lost = []
        for node, (_, _, monitor) in list(self.watched.items()):
            if monitor not in ready:
                continue
            while True:
                try:
                    event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if event["event"] == zmq.EVENT_CONNECTED:
                    self.connected.add(node)
                elif event["event"] == zmq.EVENT_DISCONNECTED and node in self.connected:
                    self.connected.discard(node)
                    lost.append(node)
        return lost

    def close(self) -> None:
        for node in list(self.watched):
            self._retire(node)
        self.close_retired()
