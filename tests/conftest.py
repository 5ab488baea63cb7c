"""Shared fixtures: unique node ids, and a guard that no test leaves shared memory behind."""

from __future__ import annotations

import itertools
import os

import pytest

from deft.runtime.ring import cleanup_node, leftovers

_ids = itertools.count()


@pytest.fixture
def node_id():
    """A node id unique to this test; its /dev/shm objects are checked and removed afterwards."""
    nid = f"t{os.getpid()}x{next(_ids)}"
    yield nid
    left = leftovers(nid)
    cleanup_node(nid)
    assert not left, f"shared memory left behind: {left}"


def pytest_collection_modifyitems(config, items):
    """``long`` tests (more crash points of a protocol already crashed at its neighbours in the CI
    suite) run with DEFT_LONG=1 (``make test-long``): the CI suite stays under ten minutes on two cores."""
    if os.environ.get("DEFT_LONG"):
        return
    skip = pytest.mark.skip(reason="long: run with DEFT_LONG=1 (make test-long)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
