"""Prometheus endpoints for the controller and every supervisor (``prometheus_client``).

``[controller] metrics`` / ``[node] metrics`` = ``"http://127.0.0.1:9400"`` serves
``/metrics`` from a thread of prometheus_client's. The figures are read when scraped
(``collect`` builds the families from what the process already keeps: shared-memory counters,
the controller's view), so serving them costs nothing between scrapes. Metric names: README,
"Metrics". prometheus_client gives the exposition format, its content negotiation and the HTTP
server; writing those by hand would be more code to get wrong than the collectors here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from deft.runtime.errors import DeftError
from deft.runtime.params import split_host_port

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    return _NAME.sub("_", "_".join(parts))


class _Collector:
    def __init__(self, collect: Callable[[], Iterable], log: logging.Logger):
        self._collect, self._log = collect, log

    def collect(self):
        try:
            yield from self._collect()
        except Exception:  # noqa: BLE001 - a scrape must never take the process down
            self._log.exception("metrics: collecting failed")


class MetricsServer:
    def __init__(self, url: str, collect: Callable[[], Iterable], log: logging.Logger, where: str):
        """Serve at ``url``; a DeftError naming ``where`` (the config file and key) if it cannot bind."""
        from prometheus_client import CollectorRegistry, start_http_server

        host, port = split_host_port(url.partition("://")[2])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(collect, log))
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise DeftError(f"{where} {url}: {exc}") from None
        self.url = f"http://{host}:{self.server.server_port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def counter_families(prefix: str, blocks: Iterable[tuple[dict[str, str], dict[str, int]]], labels: list[str]):
    """One gauge family per counter name (``<prefix>_<name>``), a sample per block and its labels."""
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, GaugeMetricFamily] = {}
    for label_values, counters in blocks:
        for name, value in counters.items():
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(metric_name(prefix, name), f"{prefix} counter {name}",
                                                         labels=labels)
            fam.add_metric([label_values[k] for k in labels], value)
    return list(families.values())
