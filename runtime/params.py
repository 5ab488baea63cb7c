"""Typed, validated access to one TOML table; every error names file, section and key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deft.runtime.errors import ConfigError


_REQUIRED = object()


class Params:
    """Typed access to an NF's ``[nf.params]`` table; errors name file, key and problem."""

    def __init__(self, values: Mapping[str, Any], source: str = "<params>", section: str = "nf.params"):
        self._values = dict(values)
        self._source = source
        self._section = section
        self._used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._source}: [{self._section}] {key}: {problem}")

    def _get(self, key: str, default: Any, types: tuple[type, ...], type_name: str) -> Any:
        self._used.add(key)
        if key not in self._values:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self._values[key]
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"expected {type_name}, got a boolean")
        if not isinstance(value, types):
            raise self.error(key, f"expected {type_name}, got {type(value).__name__} {value!r}")
        return value

    def int(self, key: str, default: Any = None, *, min: int | None = None, max: int | None = None) -> int:
        value = self._get(key, _REQUIRED if default is None else default, (int,), "an integer")
        if min is not None and value < min:
            raise self.error(key, f"must be >= {min}, got {value}")
        if max is not None and value > max:
            raise self.error(key, f"must be <= {max}, got {value}")
        return value

    def float(self, key: str, default: Any = None, *, min: float | None = None, max: float | None = None) -> float:
        value = self._get(key, _REQUIRED if default is None else default, (int, float), "a number")
        if min is not None and value < min:
            raise self.error(key, f"must be >= {min}, got {value}")
        if max is not None and value > max:
            raise self.error(key, f"must be <= {max}, got {value}")
        return float(value)

    def str(self, key: str, default: Any = None) -> str:
        return self._get(key, _REQUIRED if default is None else default, (str,), "a string")

    def bool(self, key: str, default: Any = None) -> bool:
        return self._get(key, _REQUIRED if default is None else default, (bool,), "true or false")

    def table(self, key: str, default: Any = None) -> dict:
        return dict(self._get(key, _REQUIRED if default is None else default, (dict,), "a table"))

    def choice(self, key: str, choices: tuple[str, ...], default: Any = None) -> str:
        value = self.str(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def url(self, key: str, schemes: tuple[str, ...], default: Any = None) -> str:
        """A URL such as udp://127.0.0.1:4789 whose scheme is one of ``schemes``."""
        return self._check_url(key, self.str(key, default), schemes)

    def urls(self, key: str, schemes: tuple[str, ...]) -> tuple[str, ...]:
        """One URL or a list of them (each as ``url`` checks it, none twice); () when absent or ""."""
        value = self._get(key, [], (str, list), "a URL or a list of URLs")
        values = [value] if isinstance(value, str) and value else value if isinstance(value, list) else []
        for v in values:
            if not isinstance(v, str):
                raise self.error(key, f"expected URLs, got {v!r}")
            self._check_url(key, v, schemes)
        if len(set(values)) != len(values):
            raise self.error(key, "lists a URL twice")
        return tuple(values)

    def _check_url(self, key: str, value: str, schemes: tuple[str, ...]) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in schemes or not rest:
            raise self.error(key, f"expected {' or '.join(s + '://...' for s in schemes)}, got {value!r}")
        if scheme in ("udp", "tcp", "http"):
            try:
                split_host_port(rest)
            except ValueError as exc:
                raise self.error(key, f"{exc} in {value!r}") from None
        return value

    def list(self, key: str, default: Any = None) -> list:
        return list(self._get(key, _REQUIRED if default is None else default, (list,), "a list"))

    def ipv4(self, key: str, default: Any = None) -> int:
        """An IPv4 address written as a dotted string, returned as a host-order integer."""
        text = self.str(key, default)
        try:
            return ipv4_to_int(text)
        except ValueError:
            raise self.error(key, f"expected an IPv4 address, got {text!r}") from None

    def check_unknown(self) -> None:
        """Refuse keys the NF did not read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key for this NF")



def ipv4_to_int(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise ValueError(f"not an IPv4 address: {text!r}")
    a, b, c, d = (int(p) for p in parts)
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ipv4(value: int) -> str:
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def split_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:4789' -> ('127.0.0.1', 4789); ValueError names what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return host, int(port)


def endpoint_of(base: str, index: int) -> str:
    """Instance ``index``'s endpoint on a node whose base endpoint is ``base``: its port + index
    (workers bind ``[node] fabric`` and ``[node] replication`` that way); "" when ``base`` is ""."""
    if not base:
        return ""
    scheme, _, rest = base.partition("://")
    host, port = split_host_port(rest)
    return f"{scheme}://{host}:{port + index}"
