"""Wire encoding of Raft messages."""

import pytest

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


@pytest.mark.parametrize("frames", [
    [], [b"nope", b"{}"], [b"raft1", b"not json"], [b"raft1", b"{}"],
    encode(MESSAGES[1])[:-1],                      # an entry frame missing
    [b"raft1", encode(MESSAGES[0])[1].replace(b"MsgVote", b"MsgBogus")],
])
def test_malformed_frames_raise_wire_error(frames: list[bytes]) -> None:
    with pytest.raises(WireError):
        decode(frames)
