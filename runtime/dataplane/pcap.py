"""Read and write classic libpcap files (not pcapng).

SYNOPSIS
    from deft.runtime.dataplane.pcap import read_pcap, write_pcap, PcapReader, PcapWriter, PcapError

    for ts_ns, frame in read_pcap("trace.pcap"):
        ...
    write_pcap("out.pcap", [(ts_ns, frame), ...], nanosecond=True)

DESCRIPTION
    A classic pcap file is a 24-byte global header (magic, version 2.4, snap
    length, link type) followed by records, each a 16-byte header (seconds,
    sub-seconds, captured length, original length) and the captured bytes.

    Reading accepts both byte orders and both resolutions: magic 0xA1B2C3D4
    (microseconds) and 0xA1B23C4D (nanoseconds). Every record comes out as a
    ``PcapRecord(ts_ns, frame)``: the timestamp as integer nanoseconds since
    the epoch (exact for both resolutions) and the captured bytes. A record
    cut short by the capture's snap length (captured < original length) is
    returned as captured and counted in ``PcapReader.snapped``.

    Link type: any is read and reported (``PcapReader.linktype``); callers that
    need Ethernet check for ``LINKTYPE_ETHERNET`` (1). Writing produces
    Ethernet files by default.

    pcapng (magic 0x0A0D0D0A) is not supported; the error says so and how to
    convert. A truncated or non-pcap file raises ``PcapError`` naming the file
    and the byte offset of the problem.

EXAMPLE
    >>> write_pcap("/tmp/x.pcap", [(1_700_000_000_123_456_000, b"\\x00" * 60)])
    1
    >>> [(ts, len(f)) for ts, f in read_pcap("/tmp/x.pcap")]
    [(1700000000123456000, 60)]
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import BinaryIO, NamedTuple

from deft.runtime.errors import DeftError

LINKTYPE_ETHERNET = 1
MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAGIC_PCAPNG = 0x0A0D0D0A   # pcapng Section Header Block type (a palindrome: same in both orders)
GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
DEFAULT_SNAPLEN = 262144
# A record longer than this is taken as corruption rather than allocated.
_MAX_RECORD = 1 << 24


class PcapError(DeftError, ValueError):
    """The file is not a readable classic pcap file; the message names the file and offset."""


class PcapRecord(NamedTuple):
    ts_ns: int
    frame: bytes


def _header_structs(order: str) -> tuple[struct.Struct, struct.Struct]:
    return struct.Struct(order + "IHHiIII"), struct.Struct(order + "IIII")


class PcapReader:
    """Iterate the records of an open classic pcap file.

    Attributes after construction: ``linktype``, ``snaplen``, ``nanosecond``
    (resolution of the file), ``byte_order`` ("<" or ">"), ``version``;
    ``snapped`` counts records whose captured length is below the original.
    """

    def __init__(self, path: str | PathLike[str]):
        self.path = str(path)
        self.snapped = 0
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115  (closed by close())
        try:
            self._read_global_header()
        except BaseException:
            self._file.close()
            raise

    def _error(self, offset: int, problem: str) -> PcapError:
        return PcapError(f"{self.path}: offset {offset}: {problem}")

    def _read_global_header(self) -> None:
        head = self._file.read(GLOBAL_HEADER_LEN)
        if len(head) >= 4:
            self._check_magic(head)
        if len(head) < GLOBAL_HEADER_LEN:
            raise self._error(0, f"truncated pcap file header (got {len(head)} of {GLOBAL_HEADER_LEN} bytes)")
        glob, self._record = _header_structs(self.byte_order)
        _, major, minor, _, _, snaplen, network = glob.unpack(head)
        self.version = (major, minor)
        self.snaplen = snaplen
        self.linktype = network & 0xFFFF  # upper bits may carry FCS information
        self._offset = GLOBAL_HEADER_LEN

    def _check_magic(self, head: bytes) -> None:
        (little,) = struct.unpack_from("<I", head)
        (big,) = struct.unpack_from(">I", head)
        if little == MAGIC_PCAPNG:
            raise self._error(0, "this is a pcapng file; only classic libpcap files are supported "
                                 "(convert with: editcap -F libpcap IN.pcapng OUT.pcap)")
        for order, magic in (("<", little), (">", big)):
            if magic in (MAGIC_USEC, MAGIC_NSEC):
                self.byte_order = order
                self.nanosecond = magic == MAGIC_NSEC
                return
        raise self._error(0, f"not a pcap file (magic 0x{big:08x}, expected a1b2c3d4 or a1b23c4d)")

    def __iter__(self) -> Iterator[PcapRecord]:
        read = self._file.read
        unpack = self._record.unpack
        scale = 1 if self.nanosecond else 1000
        limit = max(self.snaplen, DEFAULT_SNAPLEN, 65535)
        while True:
            offset = self._offset
            head = read(RECORD_HEADER_LEN)
            if not head:
                return
            if len(head) < RECORD_HEADER_LEN:
                raise self._error(offset, f"truncated record header (got {len(head)} of {RECORD_HEADER_LEN} bytes)")
            sec, sub, incl, orig = unpack(head)
            if incl > min(limit, _MAX_RECORD):
                raise self._error(offset, f"record length {incl} exceeds the snap length {self.snaplen}; corrupt file?")
            frame = read(incl)
            if len(frame) < incl:
                raise self._error(offset, f"truncated record: header says {incl} bytes, file has {len(frame)}")
            if incl < orig:
                self.snapped += 1
            self._offset = offset + RECORD_HEADER_LEN + incl
            yield PcapRecord(sec * 1_000_000_000 + sub * scale, frame)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: str | PathLike[str]) -> Iterator[PcapRecord]:
    """Yield ``(ts_ns, frame)`` for every record of a classic pcap file.

    The header is checked at the first ``next()``; the file is closed when the
    iteration ends or the iterator is discarded.
    """
    with PcapReader(path) as reader:
        yield from reader


class PcapWriter:
    """Write a classic pcap file record by record.

    ``nanosecond`` selects the 0xA1B23C4D magic (timestamps kept exactly);
    otherwise microseconds. Frames longer than ``snaplen`` are cut, keeping
    their original length in the record header, as a capture would.
    """

    def __init__(self, path: str | PathLike[str], *, nanosecond: bool = False,
                 linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN,
                 byte_order: str = "<"):
        if byte_order not in ("<", ">"):
            raise ValueError(f"byte_order must be '<' or '>', got {byte_order!r}")
        self.path = str(path)
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        glob, self._record = _header_structs(byte_order)
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115  (closed by close())
        magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
        self._file.write(glob.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        self.count = 0

    def write(self, ts_ns: int, frame: bytes | bytearray | memoryview) -> None:
        sec, sub = divmod(int(ts_ns), 1_000_000_000)
        if not self.nanosecond:
            sub //= 1000
        incl = min(len(frame), self.snaplen)
        self._file.write(self._record.pack(sec, sub, incl, len(frame)))
        self._file.write(frame[:incl])
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(path: str | PathLike[str], records: Iterable[tuple[int, bytes]], **options: object) -> int:
    """Write ``(ts_ns, frame)`` records to a new file; return how many were written.

    ``options`` are PcapWriter's keyword arguments (nanosecond, linktype, snaplen, byte_order).
    """
    with PcapWriter(path, **options) as writer:  # type: ignore[arg-type]
        for ts_ns, frame in records:
            writer.write(ts_ns, frame)
        return writer.count


__all__ = [
    "LINKTYPE_ETHERNET", "PcapError", "PcapReader", "PcapRecord", "PcapWriter",
    "read_pcap", "write_pcap",
]
