"""Config: defaults, and errors that name the file, the key and the problem."""

from __future__ import annotations

import pytest

from deft.runtime.config import load_config, parse_config
from deft.runtime.errors import ConfigError

BASE = {"node": {"id": "n1"}, "nf": {"kind": "flowcounter"}}


def with_(section: str, **values) -> dict:
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.setdefault(section, {}).update(values)
    return raw


def test_defaults():
    cfg = parse_config(BASE, "x.toml")
    assert cfg.ingress.listen == "udp://127.0.0.1:4789"
    assert cfg.egress.send_to == "udp://127.0.0.1:4790"
    assert cfg.node.control == "tcp://127.0.0.1:7101"
    assert (cfg.nf.instances, cfg.nf.batch_size, cfg.nf.buffer_batches) == (1, 64, 32)
    assert cfg.nf.input_capacity == 64 * 32


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"nf": {"kind": "flowcounter"}}, r"x.toml: \[node\] id: is required"),
        (with_("node", id="bad id!"), r"\[node\] id: use 1-40 letters"),
        (with_("nf", batch_size=0), r"x.toml: \[nf\] batch_size: must be >= 1, got 0"),
        (with_("nf", instances="two"), r"\[nf\] instances: expected an integer, got str 'two'"),
        (with_("nf", restart=1), r"\[nf\] restart: expected true or false"),
        (with_("ingress", listen="127.0.0.1:4789"), r"\[ingress\] listen: expected udp://"),
        (with_("ingress", listen="udp://127.0.0.1:99999"), r"\[ingress\] listen: port must be 1..65535"),
        (with_("ingress", ring_slots=1000), r"\[ingress\] ring_slots: must be a power of two"),
        (with_("ingress", stamping_unit=2), r"\[ingress\] stamping_unit: unknown key"),
        (with_("nf", kind="nope"), r"x.toml: \[nf\] kind: unknown NF 'nope'"),
        ({**BASE, "extra": {}}, r"\[extra\]: unknown section"),
        ({**BASE, "egress": 5}, r"\[egress\] must be a table"),
    ],
)
def test_errors_name_file_key_and_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, "x.toml")


def test_nf_params_are_validated_at_load(tmp_path):
    path = tmp_path / "nat.toml"
    path.write_text('[node]\nid = "n"\n[nf]\nkind = "nat"\n[nf.params]\npublic_ip = "1.2.3"\n')
    with pytest.raises(ConfigError, match=r"nat.toml: \[nf.params\] public_ip"):
        load_config(path)


def test_unknown_nf_param_is_refused(tmp_path):
    path = tmp_path / "fc.toml"
    path.write_text('[node]\nid = "n"\n[nf]\nkind = "flowcounter"\n[nf.params]\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"\[nf.params\] colour: unknown key"):
        load_config(path)


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid=")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_shipped_examples_load():
    from pathlib import Path

    from deft.runtime.controller.main import load_controller_config

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").rglob("*.toml"))
    assert len(examples) >= 8
    for path in examples:
        if path.name.startswith("controller"):
            load_controller_config(path)
        else:
            load_config(path)


def test_a_node_without_ingress_needs_a_fabric():
    with pytest.raises(ConfigError, match=r'\[ingress\] listen: "none" needs \[node\] fabric'):
        parse_config(with_("ingress", listen="none"), "x.toml")
    raw = with_("ingress", listen="none")
    raw["node"]["fabric"] = "tcp://127.0.0.1:7201"
    assert parse_config(raw, "x.toml").ingress.listen == "none"


@pytest.mark.parametrize(
    "raft, message",
    [
        ({"id": 4, "members": {"1": "tcp://127.0.0.1:1"}, "data_dir": "/tmp/x"}, r"\[raft\] id: 4 is not in members"),
        ({"id": 1, "members": {"one": "tcp://127.0.0.1:1"}, "data_dir": "/tmp/x"}, r"\[raft\] members: member ids"),
        ({"id": 1, "members": {"1": "udp://x"}, "data_dir": "/tmp/x"}, r"\[raft\] members: member 1: expected tcp"),
        ({"id": 1, "members": {"1": "tcp://127.0.0.1:1"}}, r"\[raft\] data_dir: is required"),
        ({"id": 1, "members": {"1": "tcp://127.0.0.1:1"}, "data_dir": "d", "votes": 3}, r"\[raft\] votes: unknown"),
        ({"id": 1, "members": {"1": "tcp://127.0.0.1:1"}, "learners": {"1": "tcp://127.0.0.1:2"}, "data_dir": "d"},
         r"\[raft\] learners: \[1\] listed as members and learners"),
        ({"id": 1, "members": {"1": "tcp://127.0.0.1:1"}, "learners": {"2": "udp://x"}, "data_dir": "d"},
         r"\[raft\] learners: member 2: expected tcp"),
        ({"id": 1, "members": {"1": "tcp://127.0.0.1:1"}, "learners": [2], "data_dir": "d"},
         r"\[raft\] learners: expected a table"),
    ],
)
def test_raft_section_errors_name_the_key(raft, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "raft": raft}, "x.toml")


def test_a_joining_node_is_a_learner_of_the_voters_it_lists():
    raft = {"id": 4, "members": {"1": "tcp://127.0.0.1:1"}, "learners": {"4": "tcp://127.0.0.1:4"}, "data_dir": "d"}
    section = parse_config({**BASE, "raft": raft}, "x.toml").raft
    assert (section.id, section.members, section.learners) == (4, {1: "tcp://127.0.0.1:1"}, {4: "tcp://127.0.0.1:4"})
