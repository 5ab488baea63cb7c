"""A cluster's CURVE keys: made by ``deft-ctl keys init DIR``, read by every member and operator.

ZeroMQ's CURVE encrypts every connection and names the client's public key to
the server, which asks its ZAP handler whether that key may in. The layout::

    DIR/cluster.key, cluster.key_secret          every member's bound sockets serve with this pair
    DIR/members/<name>.key, <name>.key_secret    one per controller and node (its [node] id or
                                                 [controller] id): the keys that may connect
    DIR/operators/<name>.key, <name>.key_secret  deft-ctl --keys DIR: control sockets only

A member holds the cluster's secret (it serves) and its own; an operator needs
only the cluster's public key and its own pair. A key is revoked by removing
its public file (members read the directory at start). Secret files are 0600.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from deft.runtime.errors import ConfigError

DEFAULT_MEMBERS = ("controller1", "controller2", "node1", "node2", "node3", "node4")
OPERATOR = "operator"


@dataclasses.dataclass(frozen=True)
class Keys:
    """What one process needs: the cluster's public key (and secret, for a member), its own pair, and
    the public keys that may connect (members everywhere, operators on control sockets too)."""

    where: str
    name: str
    server_public: bytes
    server_secret: bytes | None
    public: bytes
    secret: bytes
    members: frozenset[bytes]
    operators: frozenset[bytes]


def init_keys(directory: str | Path, members: list[str], operators: list[str] | None = None) -> list[str]:
    """Make the keys that are missing under ``directory`` (none is ever replaced); the files made."""
    import zmq.auth

    root = Path(directory)
    made: list[str] = []
    wanted = [(root, "cluster"), *((root / "members", m) for m in members),
              *((root / "operators", o) for o in (operators or [OPERATOR]))]
    for folder, name in wanted:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"bad key name {name!r}")
        if (folder / f"{name}.key_secret").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        made.append(str(Path(secret)))
    return made


def load_keys(directory: str | Path, name: str, operator: bool = False) -> Keys:
    """The keys of member (or, with ``operator``, operator) ``name``; ConfigError names a missing file."""
    import zmq.auth

    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such key directory (make one with: deft-ctl keys init {root})")

    def pair(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
        file = path.with_name(path.name + ("_secret" if need_secret else ""))
        if not file.is_file():
            raise ConfigError(f"{file}: no such key (deft-ctl keys init {root} --members ... makes the "
                              "missing ones)")
        try:
            return zmq.auth.load_certificate(str(file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{file}: not a key file: {exc}") from None

    server_public, server_secret = pair(root / "cluster.key", not operator)
    public, secret = pair(root / ("operators" if operator else "members") / f"{name}.key", True)
    assert secret is not None
    return Keys(str(root), name, server_public, server_secret, public, secret,
                _public_keys(root / "members"), _public_keys(root / "operators"))


def _public_keys(folder: Path) -> frozenset[bytes]:
    import zmq.auth

    if not folder.is_dir():
        return frozenset()
    return frozenset(zmq.auth.load_certificate(str(f))[0] for f in sorted(folder.glob("*.key")))


class KeyCheck:
    """The ZAP handler's question, per domain: may this client key in? (pyzmq's credentials provider)"""

    def __init__(self, allowed: frozenset[bytes]):
        self.allowed = allowed
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        self.refused += 1
        return False


def keys_from_config(raw: dict, source: str) -> str:
    """``[security] keys = "DIR"`` of a config (relative to the config file's folder): the absolute key
    directory, or "" without a [security] section."""
    from deft.runtime.params import Params

    if "security" not in raw:
        return ""
    section = raw["security"]
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: [security] must be a table")
    p = Params(section, source, "security")
    keys = p.str("keys")
    p.check_unknown()
    if not keys:
        raise p.error("keys", "must name the key directory (deft-ctl keys init DIR makes one)")
    base = Path(source).resolve().parent if not source.startswith("<") else Path.cwd()
    return str((base / keys).resolve())
