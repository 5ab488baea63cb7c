"""Classic pcap reading and writing: round trips in every flavour, and clear errors."""

from __future__ import annotations

import struct

import pytest

from deft.tools.pcap import (
    LINKTYPE_ETHERNET,
    PcapError,
    PcapReader,
    PcapWriter,
    read_pcap,
    write_pcap,
)

RECORDS = [
    (1_700_000_000_123_456_789, b"\x02" * 60),
    (1_700_000_000_123_457_000, bytes(range(200))),
    (1_700_000_001_000_000_001, b"\xff" * 1514),
]


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_round_trip(tmp_path, byte_order, nanosecond):
    path = tmp_path / "t.pcap"
    assert write_pcap(path, RECORDS, nanosecond=nanosecond, byte_order=byte_order) == 3
    with PcapReader(path) as reader:
        got = list(reader)
        assert reader.byte_order == byte_order
        assert reader.nanosecond is nanosecond
        assert reader.linktype == LINKTYPE_ETHERNET
        assert reader.version == (2, 4)
    expected_ts = [ts if nanosecond else ts // 1000 * 1000 for ts, _ in RECORDS]
    assert [r.ts_ns for r in got] == expected_ts
    assert [r.frame for r in got] == [f for _, f in RECORDS]


def test_records_unpack_as_pairs_and_empty_file_is_fine(tmp_path):
    path = tmp_path / "empty.pcap"
    write_pcap(path, [])
    assert list(read_pcap(path)) == []
    write_pcap(path, RECORDS[:1])
    [(ts, frame)] = read_pcap(path)
    assert (ts, frame) == (RECORDS[0][0] // 1000 * 1000, RECORDS[0][1])


def test_snap_length_cuts_and_is_counted(tmp_path):
    path = tmp_path / "snap.pcap"
    with PcapWriter(path, snaplen=100) as writer:
        writer.write(0, bytes(300))
    with PcapReader(path) as reader:
        [(ts, frame)] = list(reader)
        assert len(frame) == 100
        assert reader.snapped == 1


def _good_file(tmp_path):
    path = tmp_path / "good.pcap"
    write_pcap(path, RECORDS)
    return path, path.read_bytes()


def _expect_error(path, *fragments):
    with pytest.raises(PcapError) as info:
        list(read_pcap(path))
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_truncated_global_header(tmp_path):
    _, data = _good_file(tmp_path)
    path = tmp_path / "short.pcap"
    path.write_bytes(data[:10])
    _expect_error(path, "offset 0", "truncated pcap file header", "10 of 24")


def test_empty_file(tmp_path):
    path = tmp_path / "nothing.pcap"
    path.write_bytes(b"")
    _expect_error(path, "offset 0", "truncated")


def test_truncated_record_header(tmp_path):
    _, data = _good_file(tmp_path)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: 24 + 16 + 60 + 5])
    _expect_error(path, "offset 100", "truncated record header")


def test_truncated_record_data(tmp_path):
    _, data = _good_file(tmp_path)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: 24 + 16 + 30])
    _expect_error(path, "offset 24", "truncated record", "60 bytes")


def test_records_before_the_damage_are_delivered(tmp_path):
    _, data = _good_file(tmp_path)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-1])
    reader = read_pcap(path)
    assert next(reader).frame == RECORDS[0][1]
    assert next(reader).frame == RECORDS[1][1]
    with pytest.raises(PcapError, match="truncated record"):
        next(reader)


def test_absurd_record_length(tmp_path):
    _, data = _good_file(tmp_path)
    path = tmp_path / "huge.pcap"
    path.write_bytes(data[:24] + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30))
    _expect_error(path, "offset 24", "exceeds the snap length")


def test_wrong_magic(tmp_path):
    path = tmp_path / "text.pcap"
    path.write_bytes(b"hello, this is not a capture file at all")
    _expect_error(path, "offset 0", "not a pcap file", "0x68656c6c")


def test_pcapng_is_named(tmp_path):
    path = tmp_path / "trace.pcapng"
    # Section Header Block: type, length, byte-order magic, version 1.0, section length -1
    path.write_bytes(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28))
    message = _expect_error(path, "offset 0", "pcapng")
    assert "editcap" in message


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_pcap(tmp_path / "absent.pcap"))


def test_writer_rejects_bad_byte_order(tmp_path):
    with pytest.raises(ValueError, match="byte_order"):
        PcapWriter(tmp_path / "x.pcap", byte_order="!")
