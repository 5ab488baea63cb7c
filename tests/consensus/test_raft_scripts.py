"""Data-driven Raft scenarios: tests/testdata/raft/*.txt (etcd-io/raft datadriven style).

A file is a list of stanzas ``command\\n----\\nexpected output\\n`` separated by
blank lines; lines starting with # are comments. ``--raft-rewrite`` rewrites
the expected output from the actual run (review the diff before committing).
"""

from pathlib import Path

import pytest

from .interaction import Env

DATA = Path(__file__).parent.parent / "testdata" / "raft"


def parse(text: str) -> list[tuple[list[str], str, str]]:
    """-> [(comment lines, command, expected)]"""
    stanzas, comments, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            if line.startswith("#"):
                comments.append(line)
            i += 1
            continue
        assert lines[i + 1] == "----", f"line {i + 2}: expected ---- after {line!r}"
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        stanzas.append((comments, line, "\n".join(lines[i + 2:j])))
        comments, i = [], j
    return stanzas


@pytest.mark.parametrize("path", sorted(DATA.glob("*.txt")), ids=lambda p: p.stem)
def test_script(path: Path, request: pytest.FixtureRequest) -> None:
    env, out = Env(), []
    stanzas = parse(path.read_text())
    for comments, cmd, expected in stanzas:
        actual = env.run(cmd)
        out.append("\n".join([*comments, cmd, "----", actual]))
        if not request.config.getoption("--raft-rewrite"):
            assert actual == expected, f"{path.name}: {cmd}\n--- expected\n{expected}\n--- actual\n{actual}"
    if request.config.getoption("--raft-rewrite"):
        path.write_text("\n\n".join(out) + "\n")
