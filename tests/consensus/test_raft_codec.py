"""Wire encoding of Raft messages."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deft.runtime.consensus import Entry, EntryKind, Membership, Message, MsgType, Snapshot
from deft.runtime.consensus.codec import decode, encode
from deft.runtime.errors import WireError

MESSAGES = [
    Message(MsgType.VOTE, 1, 2, 3, log_term=2, index=9, transfer=True),
    Message(MsgType.APP, 1, 3, 4, log_term=4, index=7, commit=6,
            entries=(Entry(4, 8, b"\x00\xffbin"), Entry(4, 9, b"", EntryKind.NOOP))),
    Message(MsgType.APP_RESP, 3, 1, 4, index=7, reject=True, reject_hint=5, log_term=2),
    Message(MsgType.HEARTBEAT_RESP, 3, 1, 4, context=b"read\x00id"),
    Message(MsgType.SNAP, 1, 2, 5, snapshot=Snapshot(10, 4, b"state")),
    Message(MsgType.SNAP, 1, 2, 5, snapshot=Snapshot(10, 4, b"s", Membership.of([1, 2], [3]))),
]


@pytest.mark.parametrize("m", MESSAGES)
def test_round_trip(m: Message) -> None:
    assert decode(encode(m)) == m


def _bad_frames() -> list[bytes]:
    good = encode(MESSAGES[1])
    vote = encode(MESSAGES[0])
    snap = encode(MESSAGES[5])
    bad_type = bytearray(vote)
    bad_type[5] = 200                                     # no such message type
    bad_kind = bytearray(good)
    bad_kind[len(encode(Message(MsgType.APP, 1, 3, 4))) + 16] = 9   # first entry's kind
    return [
        b"", b"nope", vote[:-1], b"raft1" + vote[5:],     # short, foreign, truncated, old magic
        good[:-1],                                        # the last entry's data cut short
        good + b"x",                                      # stray bytes
        bytes(bad_type), bytes(bad_kind),
        snap.replace(b'"v"', b'"q"'),                     # snapshot membership not decodable
    ]


@pytest.mark.parametrize("frame", _bad_frames())
def test_malformed_frames_raise_wire_error(frame: bytes) -> None:
    with pytest.raises(WireError):
        decode(frame)


def test_one_frame_with_binary_context_and_payloads() -> None:
    m = Message(MsgType.APP, 2**40, 7, 2**50, log_term=3, index=2**33, commit=2**33 - 1,
                entries=tuple(Entry(3, 2**33 + k, bytes(range(256)) * k) for k in range(1, 4)),
                context=b"\x00\xff")
    frame = encode(m)
    assert isinstance(frame, bytes)
    assert decode(frame) == m
    assert decode(encode(Message(MsgType.PROP, 1, 2, 3, entries=(Entry(0, 0, b"cmd"),)))).entries[0].data == b"cmd"


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), base=st.sampled_from(range(len(MESSAGES))), cut=st.integers(0, 400),
       flip=st.integers(0, 400), byte=st.integers(0, 255))
def test_any_bytes_on_the_raft_socket_decode_or_raise_wire_error(data, base, cut, flip, byte) -> None:
    """Random frames, and real ones truncated, bit-flipped or with bytes appended: a Message or a
    WireError (the driver counts and drops those), never anything else."""
    good = bytearray(encode(MESSAGES[base]))
    if flip < len(good):
        good[flip] = byte
    for frame in (data, bytes(good[:cut]), bytes(good), bytes(good) + data):
        try:
            assert isinstance(decode(frame), Message)
        except WireError:
            pass
