"""DiskStorage with real files: round trip, overwrite, torn and corrupt records, restart of a core."""

import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from deft.runtime.consensus import (Config, CorruptStorage, Entry, EntryKind, HardState,
                                    Membership, MemoryStorage, RaftCore, Role, Snapshot)
from deft.runtime.consensus.storage import HS_NAME, LOG_NAME, SNAP_NAME, DiskStorage, encode_record


def ents(start: int, *terms: int) -> list[Entry]:
    return [Entry(t, start + k, b"v%d" % (start + k)) for k, t in enumerate(terms)]


@pytest.mark.parametrize("fsync", [True, False])
def test_round_trip(tmp_path: Path, fsync: bool) -> None:
    with DiskStorage(tmp_path, fsync=fsync) as st:
        st.save(HardState(2, 1, 3), ents(1, 1, 1, 2))
        st.save(None, [Entry(2, 4, b"", EntryKind.NOOP)])
    with DiskStorage(tmp_path) as st:
        hs, _, log = st.load()
    assert hs == HardState(2, 1, 3)
    assert log == [*ents(1, 1, 1, 2), Entry(2, 4, b"", EntryKind.NOOP)]
    assert not (tmp_path / "hardstate.tmp").exists()


def test_overwritten_suffix_is_replayed_as_truncation(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, None, 1), ents(1, 1, 1, 1))
        st.save(HardState(3, None, 1), ents(2, 3))
    with DiskStorage(tmp_path) as st:
        assert st.load()[2] == [*ents(1, 1), *ents(2, 3)]


def test_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 0), ents(1, 1, 1))
    log = tmp_path / LOG_NAME
    good = log.stat().st_size
    with open(log, "ab") as f:
        f.write(encode_record(ents(3, 1)[0])[:-3])  # a crash in the middle of write()
    with DiskStorage(tmp_path) as st:
        assert st.repaired_bytes > 0
        assert st.load()[2] == ents(1, 1, 1)
    assert log.stat().st_size == good  # the repair is on disk
    with DiskStorage(tmp_path) as st:
        assert st.repaired_bytes == 0
        st.save(None, ents(3, 1))
    with DiskStorage(tmp_path) as st:
        assert st.load()[2] == ents(1, 1, 1, 1)


@pytest.mark.parametrize("cut", [1, 5, 8, 9])
def test_torn_header_or_length_is_cut_off(tmp_path: Path, cut: int) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(None, ents(1, 1))
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(encode_record(ents(2, 1)[0])[:cut])
    with DiskStorage(tmp_path) as st:
        assert st.load()[2] == ents(1, 1)


def test_garbage_in_last_record_fails_checksum_and_is_cut_off(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(None, ents(1, 1, 1))
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[-2] ^= 0xFF  # full length written, contents wrong (e.g. a lost sector)
    log.write_bytes(bytes(data))
    with DiskStorage(tmp_path) as st:
        assert st.load()[2] == ents(1, 1)


def test_corruption_before_the_tail_is_refused(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(None, ents(1, 1, 1, 1))
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[12] ^= 0xFF  # inside the first record's payload
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage):
        DiskStorage(tmp_path)


def test_corrupt_hard_state_is_refused(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 1), ents(1, 1))
    hs = tmp_path / HS_NAME
    data = bytearray(hs.read_bytes())
    data[-1] ^= 0x01
    hs.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage):
        DiskStorage(tmp_path)


def test_commit_past_the_log_is_refused(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 1), ents(1, 1))
    os.truncate(tmp_path / LOG_NAME, 0)
    with pytest.raises(CorruptStorage):
        DiskStorage(tmp_path)


def test_core_restarts_from_disk(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path / "n1")
    core = RaftCore(Config(1, (1,)), st, random.Random(1))
    core.campaign()
    core.propose(b"a")
    rd = core.ready()
    assert rd is not None
    st.save(rd.hard_state, rd.entries)
    core.advance(rd)
    st.close()
    with DiskStorage(tmp_path / "n1") as st2:
        core2 = RaftCore(Config(1, (1,)), st2, random.Random(2))
        assert core2.term == 1 and core2.vote == 1 and core2.log.committed == 2
        assert core2.role is Role.FOLLOWER
        rd2 = core2.ready()
        assert rd2 is not None and [e.data for e in rd2.committed] == [b"", b"a"]


def test_entries_without_their_hard_state_raise_the_term_on_load() -> None:
    # A crash between the entries fsync and the hard-state rename.
    st = MemoryStorage()
    st.save(None, ents(1, 1, 3))
    core = RaftCore(Config(1, (1, 2, 3)), st, random.Random(0))
    assert core.term == 3 and core.vote is None


def test_compact_keeps_the_suffix_and_survives_reopen(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 3), ents(1, 1, 1, 1, 1))
        st.compact(Snapshot(3, 1, b"state@3", Membership.of([1, 2, 3], [4])))
        st.save(None, ents(5, 2))
    with DiskStorage(tmp_path) as st:
        hs, snap, log = st.load()
    assert snap == Snapshot(3, 1, b"state@3", Membership.of([1, 2, 3], [4]))
    assert log == [*ents(4, 1), *ents(5, 2)]


def test_received_snapshot_replaces_the_log(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 1), ents(1, 1, 1))
        st.save(HardState(2, None, 9), [], Snapshot(9, 2, b"s"))
        st.save(None, ents(10, 2))
    with DiskStorage(tmp_path) as st:
        assert st.load() == (HardState(2, None, 9), Snapshot(9, 2, b"s"), ents(10, 2))


@pytest.mark.parametrize("agree", [True, False])
def test_crash_between_snapshot_and_log_rewrite(tmp_path: Path, agree: bool) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 2), ents(1, 1, 1, 1, 1))
    # Only the snapshot file got written; the old log is still complete.
    term = 1 if agree else 5
    body = struct.pack("<QQI", 3, term, 0) + b"x"
    (tmp_path / SNAP_NAME).write_bytes(struct.pack("<I", zlib.crc32(body)) + body)
    with DiskStorage(tmp_path) as st:
        _, snap, log = st.load()
    assert snap == Snapshot(3, term, b"x")
    assert log == (ents(4, 1) if agree else [])


def test_core_restarts_from_a_snapshot(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path)
    core = RaftCore(Config(1, (1,)), st, random.Random(1))
    core.campaign()
    for k in range(5):
        core.propose(b"%d" % k)
    rd = core.ready()
    assert rd is not None
    st.save(rd.hard_state, rd.entries)
    core.advance(rd)
    st.compact(core.compact(4, b"upto4"))
    st.close()
    with DiskStorage(tmp_path) as st2:
        core2 = RaftCore(Config(1, (1,)), st2, random.Random(2))
        assert core2.log.offset == 4 and core2.log.last_index() == 6 and core2.log.applied == 4
        rd2 = core2.ready()
        assert rd2 is not None and [e.index for e in rd2.committed] == [5, 6]


def test_commit_only_updates_append_a_mark_instead_of_rewriting_hard_state(tmp_path: Path) -> None:
    with DiskStorage(tmp_path) as st:
        st.save(HardState(1, 1, 0), ents(1, 1, 1, 1))
        before = (tmp_path / HS_NAME).read_bytes()
        st.save(HardState(1, 1, 2), [])
        st.save(HardState(1, 1, 3), ents(4, 1))
        assert (tmp_path / HS_NAME).read_bytes() == before
    with DiskStorage(tmp_path) as st:
        assert st.load()[0] == HardState(1, 1, 3)
        st.compact(Snapshot(2, 1, b"s"))  # drops the marks: the hard-state file catches up
    with DiskStorage(tmp_path) as st:
        assert st.load()[0] == HardState(1, 1, 3)
        assert st.load()[2] == ents(3, 1, 1)


def test_a_damaged_length_before_the_tail_is_refused(tmp_path: Path) -> None:
    """A huge length looks like a torn tail, but valid records follow: refuse, do not truncate."""
    with DiskStorage(tmp_path) as st:
        st.save(None, ents(1, 1, 1, 1))
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[0:4] = struct.pack("<I", 1 << 30)
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage):
        DiskStorage(tmp_path)
    assert log.read_bytes() == bytes(data)  # nothing was cut
