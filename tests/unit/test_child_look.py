"""When the supervisor's loop looks at its children: a signal, a dead child waiting, or a while."""

from __future__ import annotations

from types import SimpleNamespace

from deft.runtime.node.supervisor import REAP_EVERY_S, ChildLook


def test_the_loop_looks_at_its_children_only_when_one_may_have_changed():
    live = [SimpleNamespace(died_at=0.0), SimpleNamespace(died_at=0.0)]
    look = ChildLook()
    assert look.due(100.0, live)                         # the first turn
    assert not look.due(100.001, live)                   # nothing happened since
    look.signalled()                                     # SIGCHLD (or any signal) woke the loop
    assert look.due(100.002, live) and not look.due(100.003, live)
    assert look.due(100.002 + REAP_EVERY_S, live)        # a while: a missed wake-up byte is harmless
    waiting = [live[0], SimpleNamespace(died_at=99.0)]   # one died and waits for its restart
    assert look.due(100.2, waiting) and look.due(100.21, waiting)
