"""``deft-ctl ... --wait``: an operation the controller refuses because another one runs (one it started by
itself, a rebalance after a worker's restart) is asked again until it starts; without --wait it fails."""

from __future__ import annotations

from deft.tools import ctl


def test_an_operation_held_up_by_another_starts_when_that_one_ends(monkeypatch, capsys):
    replies = []

    def query(endpoint, request, timeout_ms):
        replies.append(request)
        if len(replies) <= 2:
            return {"ok": False, "error": "operation 3 (rebalance) is still running"}
        return {"ok": True, "id": 4, "state": "running"}

    monkeypatch.setattr(ctl, "query", query)
    monkeypatch.setattr(ctl.time, "sleep", lambda s: None)
    endpoint, reply = ctl.ask("tcp://c:1", {"cmd": "drain", "node": "n2"}, 100, busy_wait_s=5.0)
    assert reply == {"ok": True, "id": 4, "state": "running"} and len(replies) == 3
    replies.clear()
    endpoint, reply = ctl.ask("tcp://c:1", {"cmd": "drain", "node": "n2"}, 100)   # no --wait
    assert reply is None and len(replies) == 1 and "is still running" in capsys.readouterr().err


def test_other_refusals_are_not_asked_again(monkeypatch):
    calls = []
    monkeypatch.setattr(ctl, "query", lambda e, r, t: calls.append(r) or {"ok": False, "error": "no node 'n9'"})
    assert ctl.ask("tcp://c:1", {"cmd": "drain", "node": "n9"}, 100, busy_wait_s=5.0)[1] is None
    assert len(calls) == 1
