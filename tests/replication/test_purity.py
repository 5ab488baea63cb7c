"""Guards on the package's shape: pure cores (no I/O, no clocks, no threads), explicit exports, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import deft.runtime.replication as pkg
from deft.runtime.errors import DeftError
from deft.runtime.replication import Release, WriteDecision
from deft.runtime.replication.errors import (
    InvariantViolation,
    NotSynced,
    ProtocolMisuse,
    ReplicationError,
    WindowFull,
)

SRC = Path(pkg.__file__).parent
FORBIDDEN = {"zmq", "time", "socket", "threading", "asyncio", "select", "selectors", "os", "random",
             "posix_ipc", "multiprocessing", "subprocess", "mmap"}
ALLOWED = {"driver.py": {"zmq"}}  # the transport: the one module that does socket I/O


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_cores_do_no_io():
    for path in sorted(SRC.glob("*.py")):
        bad = (imports(path) & FORBIDDEN) - ALLOWED.get(path.name, set())
        assert not bad, f"{path.name} imports {bad}: the replication core must stay free of I/O, clocks and randomness"


def test_modules_stay_small():
    for path in sorted(SRC.glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_public_names_are_exported():
    for name in ("PrimaryReplicator", "SecondaryReplica", "Prepare", "Sync", "Commit", "Vote", "NeedFrom",
                 "Missing", "Packets", "Delta", "Send", "WriteDecision", "Release", "Refused", "TakeOver",
                 "Replay", "ReplicationError", "WindowFull", "ProtocolMisuse", "InvariantViolation",
                 "NotSynced", "check_message", "make_stamps", "stamps_of"):
        assert getattr(pkg, name).__name__ == name


def test_errors_are_deft_errors():
    for cls in (ReplicationError, WindowFull, ProtocolMisuse, InvariantViolation, NotSynced):
        assert issubclass(cls, DeftError)


def test_crash_points_are_named_by_actions():
    assert WriteDecision.crash_point == "decision_written" and Release.crash_point == "released"
    assert set(pkg.PrimaryReplicator.CRASH_POINTS) == {
        "prepare_sent", "vote_received", "decision_written", "released", "commit_sent"}
    assert set(pkg.SecondaryReplica.CRASH_POINTS) == {"prepare_received", "voted", "commit_received"}
