"""Packaging: every package on disk is listed in pyproject, and a wheel ships only ``deft.*``.

An editable install finds unlisted subpackages anyway, so without this check
a normal install would silently miss them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"runtime": "deft.runtime", "nfs": "deft.nfs", "tools": "deft.tools"}


def packages_on_disk() -> set[str]:
    found = set()
    for folder, dotted in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    return found


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == packages_on_disk()
    assert config["package-dir"] == {v: k for k, v in MAPPED.items()}


def test_no_bare_top_level_imports():
    """`import runtime` would load a second copy of the package under another name."""
    offenders = []
    for folder in (*MAPPED, "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                if stripped.startswith(("import runtime", "import nfs", "import tools", "from runtime",
                                        "from nfs", "from tools")):
                    offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert not offenders


def test_zmq_sockets_are_made_only_by_make_socket():
    """runtime/sockets.py is the one place options (and CURVE) are set: no other module may
    call ``.socket(`` on a ZeroMQ context (``socket.socket(`` for UDP is another matter)."""
    offenders = []
    for folder in MAPPED:
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "runtime" / "sockets.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if ".socket(" in code and "socket.socket(" not in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders


@pytest.mark.slow
def test_wheel_ships_only_the_deft_namespace(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("deft-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"deft"}
    for dotted in packages_on_disk():
        assert dotted.replace(".", "/") + "/__init__.py" in names, dotted
    assert "deft/runtime/worker/worker.py" in names
