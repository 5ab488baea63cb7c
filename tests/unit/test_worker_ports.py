"""Each helper of the NF worker touches only what its port (``runtime/worker/ports.py``) names.

A helper gets the ``Worker`` as ``worker`` (kept as ``self.worker`` or ``self.w``, sometimes
aliased to a local ``w``); every attribute it reads, writes or calls on it must be a member of its
port, and the ``Worker`` must have each member (so a port cannot name what the worker lacks).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from deft.runtime.worker import ports
from deft.runtime.worker.worker import Worker

WORKER_DIR = Path(ports.__file__).parent
HELPERS = {
    "replica.py": ports.ReplicationPort,
    "takeover.py": ports.TakeOverPort,
    "globalbatches.py": ports.GlobalsPort,
    "freeze.py": ports.FreezePort,
    "bucketmove.py": ports.MovePort,
    "forward.py": ports.ForwardPort,
}


def members(port: type) -> set[str]:
    """What a Protocol declares: annotated attributes and methods, its bases' included."""
    out: set[str] = set()
    for cls in port.__mro__:
        if cls in (object,) or cls.__name__ in ("Protocol", "Generic"):
            continue
        out |= set(getattr(cls, "__annotations__", {}))
        out |= {name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("_")}
    return out


def used_on_worker(source: str) -> set[str]:
    """Attributes used on ``self.worker``, ``self.w``, or a name ``w``/``worker`` (the worker itself)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "self" \
                and v.attr in ("w", "worker"):
            out.add(node.attr)
        elif isinstance(v, ast.Name) and v.id in ("w", "worker"):
            out.add(node.attr)
    return out


@pytest.mark.parametrize("module", sorted(HELPERS))
def test_a_helper_uses_only_its_port(module):
    used = used_on_worker((WORKER_DIR / module).read_text())
    assert used, f"{module}: found no use of the worker (the check would be empty)"
    extra = used - members(HELPERS[module])
    assert not extra, f"{module} uses {sorted(extra)} of the worker, which {HELPERS[module].__name__} does not name"


@pytest.mark.parametrize("port", sorted(set(HELPERS.values()), key=lambda p: p.__name__))
def test_the_worker_has_every_member_a_port_names(port):
    source = inspect.getsource(Worker)
    for name in members(port):
        assert hasattr(Worker, name) or f"self.{name} =" in source or f"self.{name}:" in source, \
            f"{port.__name__}.{name} is not a member of Worker"


def test_the_check_sees_a_use_outside_the_port():
    src = "class H:\n    def __init__(self, worker):\n        self.w = worker\n    def f(self):\n" \
          "        w = self.w\n        return w.slots, self.w.egress, self.w.secret\n"
    assert used_on_worker(src) == {"slots", "egress", "secret"}
    assert "secret" not in members(ports.GlobalsPort) and "slots" in members(ports.GlobalsPort)
