"""Protocol messages: round trips, strict validation, and fuzzing of every decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.shamir import Share
from protocol import messages as m
from protocol.errors import MalformedMessage
from protocol.vectors import pack, unpack
from protocol.wire import MAGIC
from tests.protocol_helpers import make_round

SID = bytes(range(32))


def _samples() -> list[m.Message]:
    """One valid instance of every message type (taken from a real round where possible)."""
    ct = b"x" * m.CIPHERTEXT_BYTES
    h = b"h" * 32
    return [
        m.AdvertiseKeys(3, 1, b"a" * 32, b"b" * 32, h, b"s" * 64),
        m.AdvertiseKeys(3, 1, b"a" * 32, b"b" * 32, h),
        m.CommitProof(3, 1, 5, 4, h, b"k" * 32, (b"p" * 32,), (b"q" * 32, h)),
        m.Reveal(3, 1, b"r" * 16),
        m.RevealBroadcast(3, bytes([0, 0, 0, 1, 0, 0, 0, 4]), b"r" * 32),
        m.GraphConfirm(3, 1, h),
        m.NeighborKeys(3, 1, (m.NeighborKey(2, b"a" * 32, b"b" * 32, b"s" * 64, (h,)),
                              m.NeighborKey(7, b"c" * 32, b"d" * 32, b"", ()))),
        m.ShareKeys(SID, 1, ((2, ct), (5, ct))),
        m.ShareKeysBroadcast(SID, 2, ((1, ct),)),
        m.MaskedInput(SID, 1, 12, 3, pack(np.array([1, 4095, 7], dtype=np.uint32), 12)),
        m.ConsistencyRequest(SID, 1, (1, 2, 9)),
        m.ConsistencyConfirm(SID, 1, ((2, b"z" * 32), (9, b"y" * 32))),
        m.ConsistencyConfirm(SID, 1, ()),
        m.UnmaskRequest(SID, 1, (1, 2), ((1, b"z" * 32), (2, b"y" * 32))),
        m.UnmaskShares(SID, 1, ((1, Share(2, (5,))),), ((3, Share(2, (9,))),)),
    ]


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_round_trip(msg: m.Message) -> None:
    data = msg.encode()
    assert data[:2] == MAGIC and data[3] == msg.TAG
    assert m.decode(data) == msg
    assert type(msg).decode(data) == msg


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_truncation_and_trailing_bytes_refused(msg: m.Message) -> None:
    data = msg.encode()
    for cut in range(len(data)):
        with pytest.raises(MalformedMessage):
            m.decode(data[:cut])
    with pytest.raises(MalformedMessage):
        m.decode(data + b"\0")


def test_wrong_type_and_version_refused() -> None:
    data = m.ConsistencyConfirm(SID, 1, ((2, b"z" * 32),)).encode()
    with pytest.raises(MalformedMessage):
        m.ConsistencyRequest.decode(data)
    with pytest.raises(MalformedMessage):
        m.decode(data[:2] + bytes([99]) + data[3:])
    with pytest.raises(MalformedMessage):
        m.decode(data[:3] + bytes([200]) + data[4:])


def test_masked_vector_width_and_length() -> None:
    vec = np.array([0, 1, 2**20 - 1, 77], dtype=np.uint32)
    data = pack(vec, 20)
    assert len(data) == 4 * 3  # ceil(20/8) bytes per entry
    np.testing.assert_array_equal(unpack(data, 4, 20), vec)
    as24 = m.decode(m.MaskedInput(SID, 1, 24, 4, data).encode())  # same bytes as 24-bit
    assert isinstance(as24, m.MaskedInput)
    np.testing.assert_array_equal(as24.vector(), vec)
    over = pack(np.array([2**21], dtype=np.uint32), 24)  # 3 bytes, value >= 2^20
    with pytest.raises(MalformedMessage):  # an entry >= 2^20 in a 20-bit vector
        m.decode(m.MaskedInput(SID, 1, 20, 1, over).encode())
    with pytest.raises(MalformedMessage):
        m.MaskedInput(SID, 1, 20, 5, data)  # length 5 needs 15 bytes


def test_masked_vector_top_bits_refused() -> None:
    raw = bytearray(m.MaskedInput(SID, 1, 12, 1, pack(np.array([5], np.uint32), 12)).encode())
    raw[-1] = 0xFF  # high byte of a 12-bit entry: 0xFF05 >= 2^12
    with pytest.raises(MalformedMessage):
        m.decode(bytes(raw))


def test_unmask_shares_refuses_both_kinds_for_one_owner() -> None:
    with pytest.raises(MalformedMessage):
        m.UnmaskShares(SID, 1, ((3, Share(2, (5,))),), ((3, Share(2, (9,))),))


def test_unsorted_or_duplicate_ids_refused() -> None:
    with pytest.raises(MalformedMessage):
        m.ConsistencyRequest(SID, 1, (2, 2))
    with pytest.raises(MalformedMessage):
        m.RevealBroadcast(0, bytes([0, 0, 0, 4]) * 2, b"r" * 32)
    entry = m.NeighborKey(4, b"a" * 32, b"b" * 32, b"", ())
    with pytest.raises(MalformedMessage):
        m.NeighborKeys(0, 1, (entry, entry))


def test_real_round_messages_round_trip() -> None:
    rnd = make_round(n=4, length=5, bits=32)
    for _ in range(7):
        for data in list(rnd.down.values()) + list(rnd.up.values()):
            assert m.decode(data).encode() == data
        rnd.step()


DECODERS = [m.decode, *(cls.decode for cls in m.MESSAGE_TYPES)]


def _check_only_malformed(decoder: object, data: bytes) -> None:
    try:
        decoder(data)  # type: ignore[operator]
    except MalformedMessage:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DECODERS), st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(decoder: object, data: bytes) -> None:
    _check_only_malformed(decoder, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DECODERS), st.binary(max_size=200))
def test_fuzz_with_valid_header(decoder: object, tail: bytes) -> None:
    for tag in range(1, 10):
        _check_only_malformed(decoder, MAGIC + bytes([1, tag]) + tail)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_samples()), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                             min_size=1, max_size=4))
def test_fuzz_mutated_valid_messages(msg: m.Message, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(msg.encode())
    for pos, val in edits:
        raw[pos % len(raw)] = val
    for decoder in DECODERS:
        _check_only_malformed(decoder, bytes(raw))


@pytest.mark.parametrize("ids", [(1.0,), (True,), (2**70,), (2**63,), (-1,), (2**32,), (3, 1)])
def test_survivor_ids_must_be_increasing_client_ids(ids: tuple) -> None:
    with pytest.raises(MalformedMessage):
        m.ConsistencyRequest(SID, 1, ids)


def test_neighbor_keys_from_pre_encoded_records_equal_the_message_encoding() -> None:
    entries = (m.NeighborKey(2, b"a" * 32, b"b" * 32, b"s" * 64, (b"h" * 32, b"i" * 32)),
               m.NeighborKey(7, b"c" * 32, b"d" * 32, b"", ()))
    msg = m.NeighborKeys(3, 1, entries)
    fast = m.NeighborKeys.encode_records(3, 1, [m.NeighborKeys.record(e) for e in entries])
    assert fast == msg.encode() and m.decode(fast) == msg
