"""The controller's cluster view: joins, node failure by silence, instance failure by notice, recovery."""

from __future__ import annotations

from deft.runtime.controller.view import ClusterView


def beat(node="n1", pid=100, seq=1, alive=(True, True), pids=(11, 12)):
    return {"node": node, "pid": pid, "seq": seq, "control": "tcp://127.0.0.1:1", "fabric": "", "replication": "", "buckets": 64,
            "routes_epoch": 1,
            "instances": [{"id": f"{node}/nf{i}", "index": i, "pid": p, "alive": a, "restarts": 0}
                          for i, (a, p) in enumerate(zip(alive, pids))]}


def events(view):
    return [e["event"] for e in view.events]


def test_join_then_silence_fails_the_node_and_its_instances():
    v = ClusterView(heartbeat_ms=10, miss_limit=3)
    v.on_heartbeat(beat(seq=1), 0)
    v.on_heartbeat(beat(seq=2), 10)
    assert v.tick(35) == []
    assert v.tick(41) == ["n1"]
    st = v.status(41)
    assert st["nodes"][0]["state"] == "failed"
    assert [i["state"] for i in st["instances"]] == ["failed", "failed"]
    assert events(v) == ["node_joined", "node_failed", "instance_failed", "instance_failed"]


def test_failure_notice_is_immediate_and_recovery_is_timed():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(seq=1), 0)
    v.on_failed({"node": "n1", "process": "nf1", "pid": 12, "exit": -9}, 5)
    assert v.status(5)["instances"][1]["state"] == "failed"
    v.on_heartbeat(beat(seq=2, pids=(11, 99)), 212)
    inst = v.status(212)["instances"][1]
    assert inst["state"] == "up" and inst["pid"] == 99
    assert v.events[-1]["event"] == "instance_recovered" and v.events[-1]["recovery_ms"] == 207


def test_stale_and_duplicate_beats_change_nothing():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(seq=5), 0)
    v.on_heartbeat(beat(seq=4, alive=(False, True)), 1)
    assert v.status(1)["instances"][0]["state"] == "up"


def test_a_restarted_supervisor_is_a_new_node_incarnation():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(pid=100, seq=9), 0)
    v.tick(100)
    v.on_heartbeat(beat(pid=200, seq=1), 150)
    assert v.status(150)["nodes"][0]["pid"] == 200 and v.status(150)["nodes"][0]["state"] == "up"
    assert "node_restarted" in events(v)


def test_a_notice_from_an_unknown_node_is_ignored():
    v = ClusterView(10, 3)
    v.on_failed({"node": "ghost", "process": "nf0", "pid": 1, "exit": 1}, 0)
    assert v.status(0) == {"nodes": [], "instances": [], "pairs": [], "events": [], "false_suspicions": 0,
                           "detector_stalls": 0}


def test_a_late_node_that_comes_back_is_counted_as_a_false_suspicion():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(seq=1), 0)
    v.tick(50)
    back = v.on_heartbeat({**beat(seq=4), "late_ms": 41.5}, 55)
    assert back is not None and back["event"] == "node_recovered"   # what the controller logs
    assert v.status(55)["false_suspicions"] == 1 and v.status(55)["nodes"][0]["state"] == "up"
    # what made it: silent 55 ms, two beats lost on the way, this one sent 41.5 ms late by the node's clock
    back = [e for e in v.events if e["event"] == "node_recovered"]
    assert [{k: e[k] for k in ("silent_ms", "beats_missing", "late_ms")} for e in back] == \
        [{"silent_ms": 55, "beats_missing": 2, "late_ms": 41.5}]


def test_placement_names_each_instance_peer():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(node="a", seq=1), 0)
    v.on_heartbeat(beat(node="b", seq=1), 0)
    v.set_placement({"nodes": [["a", "", ""], ["b", "", ""]],
                     "pairs": [[0, 0, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0], [1, 1, -1, -1]]})
    st = {i["id"]: i for i in v.status(0)["instances"]}
    assert st["a/nf0"]["peer"] == "b/nf0" and st["b/nf0"]["secondary_of"] == "a/nf0"
    assert st["b/nf1"]["peer"] is None and st["a/nf1"]["secondary_of"] is None


def test_survivors_are_the_processes_back_from_a_suspicion_not_restarted_ones():
    """A node silent past the timeout comes back: its workers that kept their pid kept their state."""
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(seq=1), 0)
    assert v.survivors() == frozenset()
    assert v.tick(50) == ["n1"]
    v.on_heartbeat(beat(seq=2, pids=(11, 99)), 60)        # nf1 was restarted meanwhile
    assert v.survivors() == frozenset({("n1", 0)})
    v.on_heartbeat(beat(pid=200, seq=1, pids=(11, 12)), 70)   # a new supervisor: a new incarnation
    assert v.survivors() == frozenset()


def test_a_closed_connection_fails_the_node_at_once_and_a_beat_brings_it_back():
    v = ClusterView(10, 3)
    v.on_heartbeat(beat(seq=1), 0)
    assert v.on_disconnect("n1", 4)
    assert not v.on_disconnect("n1", 5) and not v.on_disconnect("unknown", 5)   # once; unknown nodes ignored
    st = v.status(4)
    assert st["nodes"][0]["state"] == "failed" and [i["state"] for i in st["instances"]] == ["failed", "failed"]
    assert v.events[1]["why"] == "connection lost" and v.events[1]["silence_ms"] == 4
    assert v.tick(100) == []                                   # not failed a second time by silence
    v.on_heartbeat(beat(seq=2), 120)                           # same supervisor pid: it never died
    assert v.status(120)["nodes"][0]["state"] == "up" and v.false_suspicions == 1


def test_the_change_count_moves_with_what_placement_reads_and_not_with_every_beat():
    """The controller looks at its assignment again only when ``changes`` moved (or on a timer): a beat
    that says what the last one said must not move it; a join, a new, restarted, readied or failed
    instance, a failed or returning node must."""
    v = ClusterView(10, 3)
    seen = [v.changes]

    def moved() -> bool:
        seen.append(v.changes)
        return seen[-1] != seen[-2]

    def starting(seq: int) -> dict:
        b = beat(seq=seq)
        for inst in b["instances"]:
            inst["ready"] = False
        return b

    v.on_heartbeat(starting(1), 0)
    assert moved()                                            # joined, two new instances
    for seq in range(2, 6):
        v.on_heartbeat(starting(seq), seq)
        assert not moved()                                    # the same beat again: nothing to look at
    v.on_heartbeat(beat(seq=6), 6)
    assert moved()                                            # ready now: they can take roles
    v.on_heartbeat(beat(seq=7, pids=(11, 13)), 7)
    assert moved()                                            # restarted as another process
    v.on_failed({"node": "n1", "process": "nf0", "pid": 11, "exit": -9}, 8)
    assert moved()
    v.tick(100)
    assert moved()                                            # silent: the node failed
    v.on_heartbeat(beat(seq=8, pids=(11, 13)), 101)
    assert moved()                                            # back (a false suspicion)
