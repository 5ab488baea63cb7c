"""Durable Raft storage on disk: an append-only, checksummed log file plus atomic state files.

Layout of ``directory``:
  raft.log   -- records ``[u32 length][u32 crc32(length + payload)][payload]``, payload
                ``[u64 index][u64 term][u8 kind][data]``. Overwriting a suffix
                (after a term conflict) appends the new entries; on load a
                record with index <= the last index truncates the replayed log
                there, exactly as ``save`` did.
                A record with kind 255 is not an entry but a commit mark
                (index = commit index): a Ready that only moves commit costs
                one log append instead of a hard-state file replacement.
  hardstate  -- ``[u32 crc32][u64 term][i64 vote or -1][u64 commit]``, rewritten
                when term or vote change (commit is the max of this and the marks)
  snapshot   -- ``[u32 crc32][u64 index][u64 term][u32 n][membership: n bytes][data]``
The two state files are replaced atomically: write a temp file, fsync it,
rename, fsync the directory. Compaction rewrites raft.log the same way.

``save`` writes entries (one write + fsync) before the hard state, so a stored
commit never points past the stored log. With ``fsync=False`` (tests, benchmarks)
data survives a process crash but not a power loss.

Recovery: a bad record (short header, length past the end of file, or checksum
mismatch) with nothing valid after it is what a crash during an append leaves
behind; it was never acknowledged, so it is cut off (the file is truncated and
synced). If any valid record follows the bad one, the damage is not a torn
write but corruption of acknowledged data: CorruptStorage, never a silent
truncation. (The checksum covers the length, so a damaged length is caught.)
Entries that a snapshot covers are dropped at load; if the log does not hold
the snapshot's own entry with the snapshot's term (a crash between writing a
received snapshot and emptying the log), the whole log is dropped, as
``save`` was about to do.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from deft.runtime.consensus.errors import CorruptStorage, StorageError
from deft.runtime.consensus.membership import Membership
from deft.runtime.consensus.messages import Entry, EntryKind, HardState, Snapshot
from deft.runtime.consensus.storage_api import merge_entries

_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<QQB")
_HS = struct.Struct("<QqQ")
LOG_NAME, HS_NAME, SNAP_NAME = "raft.log", "hardstate", "snapshot"
COMMIT_MARK = 255


def encode_record(e: Entry) -> bytes:
    return _record(e.index, e.term, int(e.kind), e.data)


def _record(index: int, term: int, kind: int, data: bytes = b"") -> bytes:
    payload = _ENTRY.pack(index, term, kind) + data
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", zlib.crc32(length + payload)) + payload


def _record_at(buf: bytes, pos: int) -> int | None:
    """End offset of a valid record starting at ``pos``, or None."""
    if len(buf) - pos < _HEADER.size:
        return None
    length, crc = _HEADER.unpack_from(buf, pos)
    end = pos + _HEADER.size + length
    if length < _ENTRY.size or end > len(buf):
        return None
    if zlib.crc32(buf[pos:pos + 4] + buf[pos + _HEADER.size:end]) != crc:
        return None
    return end


class DiskStorage:
    """Storage in one directory; implements the ``Storage`` protocol."""

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / LOG_NAME
        #: bytes cut from a torn tail at open (0 if the log was clean)
        self.repaired_bytes = 0
        self._commit_mark = 0
        self._snapshot = self._read_snapshot()
        self._offset, self._entries = self._recover_log()
        hs = self._read_hard_state()
        self._hard_state = HardState(hs.term, hs.vote, max(hs.commit, self._commit_mark))
        last = self._offset + len(self._entries)
        if self._hard_state.commit > last:
            raise CorruptStorage(f"{self.dir / HS_NAME}: commit {self._hard_state.commit} past "
                                 f"the last stored entry {last}")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()

    # -- Storage protocol --------------------------------------------------------
    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        return self._hard_state, self._snapshot, list(self._entries)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None) -> None:
        if snapshot is not None:
            self._write_snapshot(snapshot)
            self._offset, self._entries = snapshot.index, []
            self._rewrite_log()
        old = self._hard_state
        commit_only = (hard_state is not None and hard_state != old
                       and (hard_state.term, hard_state.vote) == (old.term, old.vote))
        if entries or commit_only:
            merge_entries(self._entries, self._offset, entries)  # validates first
            buf = b"".join(encode_record(e) for e in entries)
            if commit_only:
                assert hard_state is not None
                buf += _record(hard_state.commit, 0, COMMIT_MARK)
                self._hard_state = hard_state
            self._log.write(buf)
            self._log.flush()
            if self.fsync:
                os.fsync(self._log.fileno())
        if hard_state is not None and hard_state != self._hard_state:
            self._write_atomic(HS_NAME, _encode_hard_state(hard_state))
            self._hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.index <= self._offset:
            return
        if snapshot.index > self._offset + len(self._entries):
            raise StorageError(f"snapshot {snapshot.index} beyond the stored log")
        self._write_snapshot(snapshot)
        del self._entries[:snapshot.index - self._offset]
        self._offset = snapshot.index
        self._rewrite_log()

    # -- read-only views (tests and tools) -------------------------------------------
    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def last_index(self) -> int:
        return self._offset + len(self._entries)

    def term(self, index: int) -> int | None:
        if index == self._offset:
            return self._snapshot.term if self._snapshot else 0
        k = index - self._offset - 1
        return self._entries[k].term if 0 <= k < len(self._entries) else None

    @property
    def closed(self) -> bool:
        return self._log.closed

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- log file ----------------------------------------------------------------
    def _recover_log(self) -> tuple[int, list[Entry]]:
        raw = self._replay()
        snap = self._snapshot
        if snap is None:
            offset = 0
        else:
            offset = snap.index
            first = raw[0].index if raw else offset + 1
            k = snap.index - first  # position of the snapshot's own entry in raw
            if k >= 0:
                # Keep what follows only if the log agrees with the snapshot there.
                raw = raw[k + 1:] if k < len(raw) and raw[k].term == snap.term else []
        if raw and raw[0].index != offset + 1:
            raise CorruptStorage(f"{self.log_path}: log starts at {raw[0].index}, expected {offset + 1}")
        return offset, raw

    def _replay(self) -> list[Entry]:
        try:
            buf = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        entries: list[Entry] = []
        pos, size = 0, len(buf)
        while pos < size:
            end = _record_at(buf, pos)
            if end is None:
                if any(_record_at(buf, i) is not None for i in range(pos + 1, size)):
                    raise CorruptStorage(f"{self.log_path}: bad record at byte {pos} "
                                         "followed by valid ones")
                self._truncate_tail(pos, size)  # a torn last write
                break
            index, term, kind = _ENTRY.unpack_from(buf, pos + _HEADER.size)
            data = buf[pos + _HEADER.size + _ENTRY.size:end]
            pos = end
            if kind == COMMIT_MARK:
                self._commit_mark = max(self._commit_mark, index)
                continue
            base = entries[0].index - 1 if entries else index - 1
            try:
                merge_entries(entries, base, [Entry(term, index, data, EntryKind(kind))])
            except (StorageError, ValueError) as e:
                raise CorruptStorage(f"{self.log_path}: record ending at byte {pos}: {e}") from e
        return entries

    def _truncate_tail(self, pos: int, size: int) -> None:
        with open(self.log_path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())  # always: the repair must not be undone by a power loss
        self.repaired_bytes = size - pos

    def _rewrite_log(self) -> None:
        if hasattr(self, "_log"):
            self._log.close()
        # Commit marks are dropped here, so the hard-state file catches up first.
        self._write_atomic(HS_NAME, _encode_hard_state(self._hard_state))
        self._write_atomic(LOG_NAME, b"".join(encode_record(e) for e in self._entries))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()

    # -- state files -----------------------------------------------------------------
    def _read_hard_state(self) -> HardState:
        buf = self._read_checked(HS_NAME)
        if buf is None:
            return HardState()
        if len(buf) != _HS.size:
            raise CorruptStorage(f"{self.dir / HS_NAME}: {len(buf)} bytes, expected {_HS.size}")
        term, vote, commit = _HS.unpack(buf)
        return HardState(term, None if vote < 0 else vote, commit)

    def _read_snapshot(self) -> Snapshot | None:
        buf = self._read_checked(SNAP_NAME)
        if buf is None:
            return None
        index, term, n = struct.unpack_from("<QQI", buf)
        conf = buf[20:20 + n]
        return Snapshot(index, term, buf[20 + n:], Membership.decode(conf) if conf else None)

    def _write_snapshot(self, snap: Snapshot) -> None:
        conf = snap.membership.encode() if snap.membership is not None else b""
        self._write_atomic(SNAP_NAME, _checked(
            struct.pack("<QQI", snap.index, snap.term, len(conf)) + conf + snap.data))
        self._snapshot = snap

    def _read_checked(self, name: str) -> bytes | None:
        try:
            buf = (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        if len(buf) < 4 or zlib.crc32(buf[4:]) != struct.unpack_from("<I", buf)[0]:
            raise CorruptStorage(f"{self.dir / name}: checksum mismatch")
        return buf[4:]

    def _write_atomic(self, name: str, data: bytes) -> None:
        path = self.dir / name
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)  # make the rename itself durable
            finally:
                os.close(fd)


def _checked(body: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(body)) + body


def _encode_hard_state(hs: HardState) -> bytes:
    return _checked(_HS.pack(hs.term, -1 if hs.vote is None else hs.vote, hs.commit))
