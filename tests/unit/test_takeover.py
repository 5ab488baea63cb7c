"""The take-over's global-state pieces: the batch meta, reading a fence, rebuilding a batch from stamps."""

from __future__ import annotations

import numpy as np

from deft.runtime.consensus.kv import KVStateMachine, batch_entry, fence_entry
from deft.runtime.dataplane.packet import PACKET_DTYPE
from deft.runtime.worker.pairslot import GLOBAL_WINDOW, session_of
from deft.runtime.worker.takeover import AppliedBatch, batch_meta, before, parse_fence, split_out


def records(stamps) -> np.ndarray:
    out = np.zeros(len(stamps), dtype=PACKET_DTYPE)
    out["flow_id"] = [f for f, _ in stamps]
    out["seq"] = [s for _, s in stamps]
    return out


def test_a_fence_on_the_dead_primary_gives_each_applied_batch_by_its_batch_id():
    """Batch t's entry is session slot session_of(prefix, t); the fence inverts that."""
    sm, prefix = KVStateMachine(), "pair1/n2.0/e3"
    batch = records([(7, 1), (9, 4), (7, 2)])
    meta = batch_meta(batch, [(0, 2, 0, 1), (2, 3, 1, 1)])
    assert meta == {"calls": [[2, 1], [3, 1]], "flows": [7, 9, 7], "seqs": [1, 4, 2]}
    for t in (5, 6, 9):   # 9 replaces 5 in slot 1: a fence reports the latest of each slot
        client, seq = session_of(prefix, t)
        sm.apply(batch_entry(client, seq, [("incr", "n", (t,))], meta if t == 9 else None), index=t)
    got = parse_fence(sm.apply(fence_entry("new/fence", 1, prefix), index=10))
    assert sorted(got) == [6, 9]
    assert got[9] == AppliedBatch([20], [[2, 1], [3, 1]], [7, 9, 7], [1, 4, 2])
    assert got[6] == AppliedBatch([11], None, None, None)
    assert 9 % GLOBAL_WINDOW == 5 % GLOBAL_WINDOW


def test_a_fence_result_that_makes_no_sense_gives_nothing():
    assert parse_fence("__stale__") == {}
    assert parse_fence({"a/x": {"seq": 1, "results": []}, "a/0": {"results": []}, "a/1": "junk"}) == {}


def test_split_out_takes_the_stamps_in_the_batch_order_and_counts_what_is_not_there():
    rest = records([(1, 5), (2, 1), (1, 6), (3, 1), (2, 2)])
    batch, left, missing = split_out(rest, [2, 1, 4], [1, 5, 1])
    assert list(zip(batch["flow_id"].tolist(), batch["seq"].tolist())) == [(2, 1), (1, 5)]
    assert list(zip(left["flow_id"].tolist(), left["seq"].tolist())) == [(1, 6), (3, 1), (2, 2)]
    assert missing == 1


def test_before_finds_what_precedes_the_rebuilt_batch_in_its_flows():
    batch = records([(1, 7), (2, 3)])
    rest = records([(1, 5), (1, 9), (2, 2), (3, 1)])
    assert before(rest, batch).tolist() == [True, False, True, False]


# -- rebuilding a batch the global state has and the replica never heard of ------------------------------

class FakeWorker:
    """What ``TakeOver.rebuild`` needs of a worker: counters, a log, release, the held-batch logic."""

    def __init__(self):
        import collections
        import logging

        from deft.runtime.worker.globalbatches import GlobalBatches

        self.count = collections.Counter()
        self.log = logging.getLogger("test")
        self.released: list[tuple[int, list, list]] = []
        self.proposed: list[tuple[str, int, list]] = []
        worker = self

        class Globals(GlobalBatches):
            def commit_now(self, prefix, t, ops):   # fresh ops: what the Raft member would answer
                worker.proposed.append((prefix, t, ops))
                return [1] * len(ops)

        self.globals = Globals(self, client=None)

    def release_committed(self, pair, t, records, forward):
        stamps = list(zip(records["flow_id"].tolist(), records["seq"].tolist()))
        self.released.append((t, stamps, [stamps[i] for i in forward.tolist()]))


def portscan_slot(threshold: int):
    import logging

    from deft.nfs.base import GlobalOps
    from deft.runtime.config import parse_config
    from deft.runtime.worker.pairslot import PairSlot

    cfg = parse_config({"node": {"id": "t"}, "nf": {"kind": "portscan", "instances": 1,
                                                    "params": {"threshold": threshold}}}, "t.toml")
    return PairSlot(cfg, 0, 1, logging.getLogger("test"), adopt_unknown=False, keep_inputs=True,
                    global_ops=GlobalOps())


def takeover_of(worker, slot):
    from deft.runtime.worker.takeover import TakeOver

    to = TakeOver(worker, 0, 7, 1)
    to.slot, to.old_sessions = slot, "pair0/n2.0/e3"
    return to


def scan_records():
    from tests.unit.test_global_worker import CLIENT, SCANNER, VICTIM, Flows

    flows = Flows()
    first = flows.batch([(SCANNER, 40000, VICTIM, 1), (SCANNER, 40000, VICTIM, 2), (CLIENT, 5000, VICTIM, 443)])
    later = flows.batch([(CLIENT, 5000, VICTIM, 443), (SCANNER, 40000, VICTIM, 3)])
    return np.concatenate([first, later])   # stamps: (1,1) (2,1) (3,1) (3,2) (4,1)


def test_a_rebuilt_batch_runs_its_calls_with_the_recorded_results_after_what_precedes_it():
    """The dead primary's batch t = [(1,1) (2,1)] [(3,2) (4,1)] (two NF calls) was applied with
    window counts 1, 2, 3: the third is over the threshold of 2, so the scanner's (4,1) is dropped,
    though this slot never counted anything. The client's (3,1) precedes (3,2) in its flow: it goes
    first, as fresh input under this slot's own session. What is left of the buffer stays."""
    worker, slot = FakeWorker(), portscan_slot(threshold=2)
    rest = scan_records()
    applied = AppliedBatch([1, 2, 3], [[2, 2], [4, 3]], [1, 2, 3, 4], [1, 1, 2, 1])
    left = takeover_of(worker, slot).rebuild(9, applied, rest)
    assert len(left) == 0
    assert worker.released == [(9, [(3, 1)], [(3, 1)]),
                                (9, [(1, 1), (2, 1), (3, 2), (4, 1)], [(1, 1), (2, 1), (3, 2)])]
    # the client's first packet counted its pair, a new op under this slot's sessions (not the dead primary's)
    assert [(prefix, [op[:2] for op in ops]) for prefix, _t, ops in worker.proposed] == \
        [("pair0/local", [("add_to_window", "portscan/10.0.0.7")])]
    assert worker.count["takeover_rebuilt"] == 1 and worker.count["takeover_rebuilt_before"] == 1
    assert slot.ordering.next_expected == {1: 2, 2: 2, 3: 3, 4: 2}    # later copies are old news


def test_a_rebuilt_batch_with_packets_missing_here_is_counted_and_judged_on_what_came_back():
    worker, slot = FakeWorker(), portscan_slot(threshold=2)
    rest = scan_records()[:2]                                      # (1,1) and (2,1) only
    applied = AppliedBatch([1, 2, 3], [[2, 2], [3, 3]], [1, 2, 4], [1, 1, 1])
    left = takeover_of(worker, slot).rebuild(9, applied, rest)
    assert len(left) == 0 and worker.count["takeover_rebuilt_missing"] == 1
    (t, stamps, _forwarded), = worker.released
    assert (t, stamps) == (9, [(1, 1), (2, 1)])


# -- the fence, proposed without waiting for it -----------------------------------------------------------

class FencingWorker(FakeWorker):
    """A ``FakeWorker`` whose global client only records what is proposed; the test answers."""

    def __init__(self):
        import types

        super().__init__()
        self.fencing: dict = {}
        self.replicated: list = []
        self.record = types.SimpleNamespace(reset_pair=lambda pair, t: self.count.update({"reset_to": t}))
        worker = self

        class Client:
            def submit(self, pending):
                worker.submitted.append(pending)

            def forget(self, pending):
                worker.forgotten.append(pending)

        self.submitted, self.forgotten = [], []
        self.globals.client = Client()

    def replicate(self, slot, key, nodes):
        self.replicated.append((slot.pair, key, nodes, self.count["takeovers"]))


def fencing_takeover(worker, slot, rest):
    import types

    from deft.runtime.dataplane.packet import record_payloads

    laid_out = np.zeros(len(rest), dtype=PACKET_DTYPE)   # np.concatenate drops the records' padding
    for name in PACKET_DTYPE.names:
        laid_out[name] = rest[name]
    to = takeover_of(worker, slot)
    to.plan = types.SimpleNamespace(replays=[], rest_payloads=record_payloads(laid_out), last_batch=8,
                                    in_doubt=[])
    to.epoch = 3
    return to


def fence_result(applied_batch: int):
    """What the Raft member answers the fence with: the dead primary applied ``applied_batch``."""
    sm, prefix = KVStateMachine(), "pair0/n2.0/e3"
    meta = {"calls": [[2, 2], [4, 3]], "flows": [1, 2, 3, 4], "seqs": [1, 1, 2, 1]}
    client, seq = session_of(prefix, applied_batch)
    sm.apply(batch_entry(client, seq, [("add_to_window", "x", (1,))], meta), index=1)
    sm.apply(batch_entry(client, seq, [("add_to_window", "x", (1,))], meta), index=2)   # a retry: once
    return sm.apply(fence_entry("new/fence", 1, prefix), index=3)


def test_a_take_over_goes_on_when_its_fence_answers_and_the_pair_holds_its_input_until_then():
    """The fence is proposed and the worker's loop goes on (other pairs, its replicas' votes): the pair
    holds what arrives, and its route changes wait. When the answer comes, the batch the dead primary
    applied and never prepared is rebuilt and released, then what arrived meanwhile goes through, then
    the secondary the routes gave the pair meanwhile gets its sync."""
    worker, slot = FencingWorker(), portscan_slot(threshold=2)
    records = scan_records()
    to = fencing_takeover(worker, slot, records)
    to.begin_fence()
    (fence,) = worker.submitted
    assert worker.fencing == {0: to} and slot.waiting is fence and fence.client == "pair0/local/fence"
    late = records[:1].copy()
    late["seq"] = 2                                      # flow 1's next packet arrives meanwhile: held
    slot.process(late)
    to.then_replicate = ("node3-key", "nodes")           # Worker.replicate defers a sync to here
    assert slot.held_n == 1 and slot.out.n == 0
    assert not to.poll_fence(0.0) and worker.fencing == {0: to} and worker.released == []
    fence.results = fence_result(9)
    assert to.poll_fence(0.0)
    assert worker.fencing == {} and slot.waiting is None and slot.held_n == 0
    assert [(t, stamps) for t, stamps, _ in worker.released] == [(9, [(3, 1)]), (9, [(1, 1), (2, 1), (3, 2), (4, 1)])]
    assert worker.count["takeover_fenced"] == 1 and worker.count["reset_to"] == 9 and slot.taken_core is not None
    assert slot.ordering.next_expected[1] == 3           # the held packet went through after the rebuild
    assert worker.replicated == [(0, "node3-key", "nodes", 1)]   # after the take-over finished
    assert worker.forgotten == []


def test_a_fence_without_an_answer_gives_up_after_the_global_wait_and_the_take_over_goes_on(monkeypatch):
    from deft.runtime.worker import takeover as takeover_module

    worker, slot = FencingWorker(), portscan_slot(threshold=2)
    now = [100.0]
    monkeypatch.setattr(takeover_module.time, "monotonic", lambda: now[0])
    to = fencing_takeover(worker, slot, scan_records()[:2])
    to.begin_fence()
    assert not to.poll_fence(now[0] + takeover_module.GLOBAL_WAIT_S - 1)
    assert to.poll_fence(now[0] + takeover_module.GLOBAL_WAIT_S)
    assert worker.forgotten == worker.submitted and worker.count["global_timeouts"] == 1
    assert worker.count["takeover_fence_failed"] == 1 and worker.count["takeovers"] == 1
    assert worker.fencing == {} and slot.waiting is None and slot.out.n == 2   # the buffered packets, as input
