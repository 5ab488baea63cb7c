"""Options for the consensus tests (names prefixed: one conftest per option name)."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--raft-rewrite", action="store_true", default=False,
                     help="regenerate tests/testdata/raft/*.txt expected output (review the diff)")
