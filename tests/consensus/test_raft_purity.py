"""Guards on the package's shape: a pure core, one zmq importer, explicit exports."""

import ast
import subprocess
import sys
from pathlib import Path

import deft.runtime.consensus as pkg

SRC = Path(pkg.__file__).parent
IO_MODULES = {"zmq", "time", "socket", "threading", "asyncio", "select", "selectors", "os"}
# Modules allowed to do I/O: the transport and the disk adapter.
ALLOWED = {"driver.py": {"zmq", "time"}, "storage.py": {"os"}, "failpoints.py": {"os", "time"}}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_adapters_do_io() -> None:
    for path in sorted(SRC.glob("*.py")):
        bad = (imports(path) & IO_MODULES) - ALLOWED.get(path.name, set())
        assert not bad, f"{path.name} imports {bad}: the core must stay free of I/O and clocks"


def test_no_global_random() -> None:
    """random.Random (an injected, seeded instance) is the only use of the random module."""
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "random"):
                assert node.attr == "Random", f"{path.name}: random.{node.attr}"


def test_public_names_are_exported() -> None:
    for name in ("RaftCore", "Config", "Ready", "Role", "Message", "MsgType", "Entry", "EntryKind",
                 "HardState", "Snapshot", "Membership", "MemoryStorage", "Storage", "NotLeader",
                 "InvalidRequest", "InvariantViolation", "ConsensusError", "StorageError",
                 "CorruptStorage"):
        assert getattr(pkg, name).__name__ == name


def test_importing_the_package_loads_no_zmq() -> None:
    code = "import sys, deft.runtime.consensus; sys.exit('zmq' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
