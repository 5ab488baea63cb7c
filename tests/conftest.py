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
