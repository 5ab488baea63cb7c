"""The round-cost recorder (DEFT_ROUND_COSTS): CPU per phase by what woke the round, summed across files."""

from __future__ import annotations

from deft.runtime import roundcost
from deft.runtime.roundcost import NO_COSTS, RoundCosts, round_costs, table


def test_without_the_variable_a_worker_records_nothing(monkeypatch):
    monkeypatch.delenv(roundcost.ENV, raising=False)
    assert round_costs("n.worker0") is NO_COSTS


def test_each_phase_is_charged_to_the_cause_of_its_round_and_the_files_sum(tmp_path, monkeypatch):
    monkeypatch.setenv(roundcost.ENV, str(tmp_path))
    clock = iter(range(0, 10_000_000, 1000))            # every reading 1 us after the one before
    files = []
    for rounds in ((("votes", 2),), (("votes", 1), ("replica", 1))):
        costs = round_costs("n.worker0")
        assert isinstance(costs, RoundCosts)
        costs.clock = lambda: next(clock)
        for kind, n in rounds:
            for _ in range(n):
                costs.begin()
                costs.woke(kind)                          # 1 us of wait
                costs.mark("messages")                    # 1 us
                costs.mark("release")                     # 1 us
        costs.path = str(tmp_path / f"w{len(files)}.json")
        costs.dump()
        files.append(costs.path)
    header, *rows = table(files)
    assert header.split()[:4] == ["woken", "by", "rounds", "us/round"]
    got = {row.split()[0]: row.split() for row in rows}
    assert got["votes"][1:4] == ["3", "3", "75.0%"] and got["replica"][1:4] == ["1", "3", "25.0%"]
    phases = dict(zip(header.split()[5:], got["votes"][4:]))   # wait routes copies messages input release ...
    assert {k: float(v) for k, v in phases.items() if float(v)} == {"wait": 1, "messages": 1, "release": 1}


def test_an_io_round_names_its_first_phase_and_its_table_has_its_own_phases(tmp_path):
    costs = RoundCosts(str(tmp_path / "n.io.1.json"))
    clock = iter(range(0, 10_000, 1000))
    costs.clock = lambda: next(clock)
    costs.begin()
    costs.woke("datagrams", "read")
    costs.mark("units")
    costs.dump()
    header, row = table([costs.path])
    assert header.split()[5:] == ["read", "units"] and row.split()[:2] == ["datagrams", "1"]
