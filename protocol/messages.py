"""Protocol messages: one frozen dataclass per round and direction, with a binary encoding.

Client -> server: :class:`AdvertiseKeys`, :class:`Reveal`, :class:`GraphConfirm`,
:class:`ShareKeys`, :class:`MaskedInput`, :class:`ConsistencyConfirm`,
:class:`UnmaskShares`. Server -> client: :class:`CommitProof`, :class:`RevealBroadcast`,
:class:`NeighborKeys`, :class:`ShareKeysBroadcast`, :class:`ConsistencyRequest`,
:class:`UnmaskRequest`. No message carries all n advertised keys: a client gets its k
neighbours' keys with Merkle paths (see :mod:`protocol.graph`). ``encode()`` gives the versioned, length-prefixed bytes (see
:mod:`protocol.wire`); ``Class.decode(data)`` and :func:`decode` validate every field
(sizes, id ordering, vector length and bit width) and raise only :class:`MalformedMessage`.
Semantic checks against the round (which ids, which session) happen in the state machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import numpy as np

from crypto.aead import TAG_BYTES
from crypto.errors import SharingError
from crypto.mac import TAG_BYTES as MAC_TAG_BYTES
from crypto.shamir import Share, share_from_bytes, share_to_bytes
from crypto.signing import SIGNATURE_BYTES
from protocol.commitments import HASH_BYTES, REVEAL_BYTES
from protocol.config import MAX_CLIENT_ID, MAX_LENGTH
from protocol.errors import MalformedMessage
from protocol.vectors import entry_bytes, unpack
from protocol.wire import HEADER_BYTES, Reader, Writer, peek_tag

KEY_BYTES = 32
SESSION_BYTES = 32
SHARE_PAIR_BYTES = len(share_to_bytes(Share(1, (0, 0))))  # one holder's (s_sk, b) shares
SINGLE_SHARE_BYTES = len(share_to_bytes(Share(1, (0,))))
CIPHERTEXT_BYTES = SHARE_PAIR_BYTES + TAG_BYTES
IdPairs: TypeAlias = tuple[tuple[int, bytes], ...]
ShareList: TypeAlias = tuple[tuple[int, Share], ...]


def _check_id(value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= MAX_CLIENT_ID:
        raise MalformedMessage("client id out of range")


def _check_len(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedMessage(f"{what} must be {size} bytes")


def _check_sorted(ids: tuple[int, ...]) -> None:
    """Ids in range and strictly increasing (vectorized: survivor lists hold n ids)."""
    if not ids:
        return
    try:
        arr = np.array(ids)
    except (TypeError, ValueError, OverflowError):
        raise MalformedMessage("client ids must be integers") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":  # floats, bools, objects (huge ints)
        raise MalformedMessage("client ids must be integers")
    if int(arr.min()) < 0 or int(arr.max()) > MAX_CLIENT_ID:
        raise MalformedMessage("client id out of range")
    arr = arr.astype(np.int64)
    if arr.size > 1 and not bool(np.all(arr[1:] > arr[:-1])):
        raise MalformedMessage("ids must be strictly increasing")


def _check_pairs(pairs: IdPairs, size: int, what: str) -> None:
    _check_sorted(tuple(p[0] for p in pairs))
    for _, blob in pairs:
        _check_len(blob, size, what)


def _write_pairs(w: Writer, pairs: IdPairs) -> None:
    w.u32(len(pairs))
    for cid, blob in pairs:
        w.u32(cid).blob(blob)


def _read_pairs(r: Reader, size: int) -> IdPairs:
    return r.pairs(size)


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Client -> server, round 0: the client's two X25519 public keys and its commitment
    C_u to fresh graph randomness (:mod:`protocol.commitments`), optionally signed."""

    TAG: ClassVar[int] = 1
    round_id: int
    sender: int
    c_pk: bytes
    s_pk: bytes
    commitment: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.sender)
        _check_len(self.c_pk, KEY_BYTES, "c_pk")
        _check_len(self.s_pk, KEY_BYTES, "s_pk")
        _check_len(self.commitment, HASH_BYTES, "commitment")
        if len(self.signature) not in (0, SIGNATURE_BYTES):
            raise MalformedMessage("signature must be empty or 64 bytes")

    def encode(self) -> bytes:
        w = Writer(self.TAG).u64(self.round_id).u32(self.sender)
        w.blob(self.c_pk).blob(self.s_pk).blob(self.commitment)
        return w.blob(self.signature).finish()

    @classmethod
    def decode(cls, data: bytes) -> AdvertiseKeys:
        r = Reader(data, cls.TAG)
        out = cls(r.u64(), r.u32(), r.blob(exact=KEY_BYTES), r.blob(exact=KEY_BYTES),
                  r.blob(exact=HASH_BYTES), r.blob(max_len=SIGNATURE_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class AdvertisedKey:
    """One client's advertised keys as a record (not a message by itself)."""

    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def __post_init__(self) -> None:
        AdvertiseKeys(0, self.client_id, self.c_pk, self.s_pk, bytes(HASH_BYTES),
                      self.signature)


def _check_path(path: tuple[bytes, ...]) -> None:
    if len(path) > 64 or any(not isinstance(h, bytes) or len(h) != HASH_BYTES for h in path):
        raise MalformedMessage("a Merkle path is at most 64 hashes of 32 bytes")


def _read_path(r: Reader) -> tuple[bytes, ...]:
    blob = r.blob(max_len=64 * HASH_BYTES)
    if len(blob) % HASH_BYTES:
        raise MalformedMessage("a Merkle path must be whole 32-byte hashes")
    return tuple(blob[i : i + HASH_BYTES] for i in range(0, len(blob), HASH_BYTES))


@dataclass(frozen=True, slots=True)
class CommitProof:
    """Server -> one client, end of round 0: the round's two Merkle roots over the m
    clients that advertised (commitments and keys, in id order) and this client's own
    leaf index and paths, which it checks before it reveals (O(log m) bytes)."""

    TAG: ClassVar[int] = 10
    round_id: int
    recipient: int
    size: int
    index: int
    commit_root: bytes
    key_root: bytes
    commit_path: tuple[bytes, ...]
    key_path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_id(self.recipient)
        if not 0 <= self.index < self.size <= MAX_CLIENT_ID + 1:
            raise MalformedMessage("leaf index must be below the tree size")
        _check_len(self.commit_root, HASH_BYTES, "commitment root")
        _check_len(self.key_root, HASH_BYTES, "key root")
        _check_path(self.commit_path)
        _check_path(self.key_path)

    def encode(self) -> bytes:
        w = Writer(self.TAG).u64(self.round_id).u32(self.recipient).u32(self.size)
        w.u32(self.index).blob(self.commit_root).blob(self.key_root)
        return w.blob(b"".join(self.commit_path)).blob(b"".join(self.key_path)).finish()

    @classmethod
    def decode(cls, data: bytes) -> CommitProof:
        r = Reader(data, cls.TAG)
        out = cls(r.u64(), r.u32(), r.u32(), r.u32(), r.blob(exact=HASH_BYTES),
                  r.blob(exact=HASH_BYTES), _read_path(r), _read_path(r))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class Reveal:
    """Client -> server, round 1: r_u, the randomness behind the client's commitment."""

    TAG: ClassVar[int] = 11
    round_id: int
    sender: int
    reveal: bytes

    def __post_init__(self) -> None:
        _check_id(self.sender)
        _check_len(self.reveal, REVEAL_BYTES, "reveal")

    def encode(self) -> bytes:
        return Writer(self.TAG).u64(self.round_id).u32(self.sender).blob(self.reveal).finish()

    @classmethod
    def decode(cls, data: bytes) -> Reveal:
        r = Reader(data, cls.TAG)
        out = cls(r.u64(), r.u32(), r.blob(exact=REVEAL_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class RevealBroadcast:
    """Server -> every client, end of round 1: the committed ids (increasing) and their
    reveals, 16 bytes each in id order -- one message shared by all, 20 bytes a client."""

    TAG: ClassVar[int] = 12
    round_id: int
    ids: bytes  # 4-byte big-endian ids, strictly increasing
    reveals: bytes

    def __post_init__(self) -> None:
        if len(self.ids) % 4 or len(self.reveals) != len(self.ids) // 4 * REVEAL_BYTES:
            raise MalformedMessage("one 16-byte reveal per 4-byte id")
        arr = self.id_array()
        if arr.size > 1 and not bool(np.all(arr[1:] > arr[:-1])):
            raise MalformedMessage("committed ids must be strictly increasing")
        if arr.size and int(arr[-1]) > MAX_CLIENT_ID:
            raise MalformedMessage("client id out of range")

    def id_array(self) -> np.ndarray:
        return np.frombuffer(self.ids, dtype=">u4").astype(np.int64)

    def reveal_at(self, index: int) -> bytes:
        return self.reveals[index * REVEAL_BYTES : (index + 1) * REVEAL_BYTES]

    def encode(self) -> bytes:
        return Writer(self.TAG).u64(self.round_id).blob(self.ids).blob(self.reveals).finish()

    @classmethod
    def decode(cls, data: bytes) -> RevealBroadcast:
        r = Reader(data, cls.TAG)
        out = cls(r.u64(), r.blob(), r.blob())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class GraphConfirm:
    """Client -> server, round 2: the graph seed the client derived from the reveals (the
    server checks it equals its own: a client shown another reveal list is caught here)."""

    TAG: ClassVar[int] = 13
    round_id: int
    sender: int
    seed: bytes

    def __post_init__(self) -> None:
        _check_id(self.sender)
        _check_len(self.seed, HASH_BYTES, "graph seed")

    def encode(self) -> bytes:
        return Writer(self.TAG).u64(self.round_id).u32(self.sender).blob(self.seed).finish()

    @classmethod
    def decode(cls, data: bytes) -> GraphConfirm:
        r = Reader(data, cls.TAG)
        out = cls(r.u64(), r.u32(), r.blob(exact=HASH_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class NeighborKey:
    """One neighbour's key leaf and its path in the key tree (part of NeighborKeys)."""

    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        AdvertisedKey(self.client_id, self.c_pk, self.s_pk, self.signature)
        _check_path(self.path)


@dataclass(frozen=True, slots=True)
class NeighborKeys:
    """Server -> one client, end of round 2: its graph neighbours' key leaves with their
    Merkle paths, ids increasing (O(k log m) bytes; a client never gets other keys)."""

    TAG: ClassVar[int] = 14
    round_id: int
    recipient: int
    entries: tuple[NeighborKey, ...]

    def __post_init__(self) -> None:
        _check_id(self.recipient)
        _check_sorted(tuple(e.client_id for e in self.entries))

    @staticmethod
    def record(entry: NeighborKey) -> bytes:
        """The encoded bytes of one entry, as :meth:`encode` writes them."""
        w = Writer(0).u32(entry.client_id).blob(entry.c_pk).blob(entry.s_pk)
        return w.blob(entry.signature).blob(b"".join(entry.path)).finish()[HEADER_BYTES:]

    @classmethod
    def encode_records(cls, round_id: int, recipient: int, records: list[bytes]) -> bytes:
        """Encoding of a message whose entries are already encoded with :meth:`record`
        (ids increasing; server side: a client's record is the same in every message
        that carries it, so the server encodes each once instead of once per holder)."""
        w = Writer(cls.TAG).u64(round_id).u32(recipient).u32(len(records))
        return w.finish() + b"".join(records)

    def encode(self) -> bytes:
        return self.encode_records(self.round_id, self.recipient,
                                   [self.record(e) for e in self.entries])

    @classmethod
    def decode(cls, data: bytes) -> NeighborKeys:
        r = Reader(data, cls.TAG)
        round_id, rcpt = r.u64(), r.u32()
        n = r.count(4 + 3 * 4 + 2 * KEY_BYTES + 4)
        entries = tuple(NeighborKey(r.u32(), r.blob(exact=KEY_BYTES), r.blob(exact=KEY_BYTES),
                                    r.blob(max_len=SIGNATURE_BYTES), _read_path(r))
                        for _ in range(n))
        r.end()
        return cls(round_id, rcpt, entries)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Client -> server, round 1: one AES-GCM ciphertext of shares per recipient neighbour."""

    TAG: ClassVar[int] = 3
    session_id: bytes
    sender: int
    ciphertexts: IdPairs  # (recipient, ciphertext), recipients increasing

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.sender)
        _check_pairs(self.ciphertexts, CIPHERTEXT_BYTES, "share ciphertext")

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.sender)
        _write_pairs(w, self.ciphertexts)
        return w.finish()

    @classmethod
    def decode(cls, data: bytes) -> ShareKeys:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), _read_pairs(r, CIPHERTEXT_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class ShareKeysBroadcast:
    """Server -> one client, end of round 1: the ciphertexts addressed to it, by sender."""

    TAG: ClassVar[int] = 4
    session_id: bytes
    recipient: int
    ciphertexts: IdPairs  # (sender, ciphertext), senders increasing

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.recipient)
        _check_pairs(self.ciphertexts, CIPHERTEXT_BYTES, "share ciphertext")

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.recipient)
        _write_pairs(w, self.ciphertexts)
        return w.finish()

    @classmethod
    def decode(cls, data: bytes) -> ShareKeysBroadcast:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), _read_pairs(r, CIPHERTEXT_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Client -> server, round 2: y_u packed as ceil(bits/8) little-endian bytes per entry."""

    TAG: ClassVar[int] = 5
    session_id: bytes
    sender: int
    bits: int
    length: int
    data: bytes

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.sender)
        if not 1 <= self.bits <= 64 or not 1 <= self.length <= MAX_LENGTH:
            raise MalformedMessage("bits must be in 1..64 and length in 1..2^28")
        if len(self.data) != self.length * entry_bytes(self.bits):
            raise MalformedMessage("masked vector size does not match length and bits")

    def vector(self) -> np.ndarray:
        """The masked vector as uint32/uint64 words (validated: entries < 2^bits)."""
        return unpack(self.data, self.length, self.bits)

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.sender)
        return w.u8(self.bits).u32(self.length).blob(self.data).finish()

    @classmethod
    def decode(cls, data: bytes) -> MaskedInput:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), r.u8(), r.u32(), r.blob())
        r.end()
        unpack(out.data, out.length, out.bits)  # width check: no entry >= 2^bits
        return out


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """Server -> one client, round 3 (authenticated): the survivor set U3 to sign."""

    TAG: ClassVar[int] = 6
    session_id: bytes
    recipient: int
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.recipient)
        _check_sorted(self.survivors)

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.recipient)
        return w.ids(self.survivors).finish()

    @classmethod
    def decode(cls, data: bytes) -> ConsistencyRequest:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), r.ids())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class ConsistencyConfirm:
    """Client -> server, round 3 (authenticated): one HMAC tag per surviving neighbour,
    each confirming to that neighbour the survivor set U3 this client was shown
    (:func:`protocol.session.confirmation_fields`), recipients increasing."""

    TAG: ClassVar[int] = 7
    session_id: bytes
    sender: int
    tags: IdPairs  # (recipient, tag)

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.sender)
        _check_pairs(self.tags, MAC_TAG_BYTES, "confirmation tag")

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.sender)
        _write_pairs(w, self.tags)
        return w.finish()

    @classmethod
    def decode(cls, data: bytes) -> ConsistencyConfirm:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), _read_pairs(r, MAC_TAG_BYTES))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> one client, round 4: survivors U3 (+ the confirmation tags its surviving
    neighbours addressed to it)."""

    TAG: ClassVar[int] = 8
    session_id: bytes
    recipient: int
    survivors: tuple[int, ...]
    confirmations: IdPairs = ()  # (sender, tag), senders increasing; empty if unauthenticated

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.recipient)
        _check_sorted(self.survivors)
        _check_pairs(self.confirmations, MAC_TAG_BYTES, "confirmation tag")

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.recipient).ids(self.survivors)
        _write_pairs(w, self.confirmations)
        return w.finish()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskRequest:
        r = Reader(data, cls.TAG)
        out = cls(r.blob(exact=SESSION_BYTES), r.u32(), r.ids(), _read_pairs(r, MAC_TAG_BYTES))
        r.end()
        return out


def _share_pairs(pairs: ShareList) -> IdPairs:
    return tuple((owner, share_to_bytes(s)) for owner, s in pairs)


def _parse_shares(pairs: IdPairs) -> ShareList:
    try:
        out = tuple((owner, share_from_bytes(b)) for owner, b in pairs)
    except SharingError:
        raise MalformedMessage("malformed share") from None
    if any(len(s.values) != 1 for _, s in out):
        raise MalformedMessage("an unmasking share must hold exactly one field element")
    return out


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    """Client -> server, round 4: per owner, a self-mask share OR a key share, never both."""

    TAG: ClassVar[int] = 9
    session_id: bytes
    sender: int
    self_shares: ShareList  # (owner, share of b_owner), owners increasing: owner survived
    key_shares: ShareList  # (owner, share of s_sk_owner), owners increasing: owner dropped

    def __post_init__(self) -> None:
        _check_len(self.session_id, SESSION_BYTES, "session id")
        _check_id(self.sender)
        for pairs in (self.self_shares, self.key_shares):
            _check_sorted(tuple(o for o, _ in pairs))
            if any(not isinstance(s, Share) or len(s.values) != 1 for _, s in pairs):
                raise MalformedMessage("an unmasking share must hold exactly one field element")
        if {o for o, _ in self.self_shares} & {o for o, _ in self.key_shares}:
            raise MalformedMessage("both shares revealed for one owner")

    def encode(self) -> bytes:
        w = Writer(self.TAG).blob(self.session_id).u32(self.sender)
        _write_pairs(w, _share_pairs(self.self_shares))
        _write_pairs(w, _share_pairs(self.key_shares))
        return w.finish()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskShares:
        r = Reader(data, cls.TAG)
        session, sender = r.blob(exact=SESSION_BYTES), r.u32()
        self_pairs = _read_pairs(r, SINGLE_SHARE_BYTES)
        key_pairs = _read_pairs(r, SINGLE_SHARE_BYTES)
        r.end()
        return cls(session, sender, _parse_shares(self_pairs), _parse_shares(key_pairs))


Message: TypeAlias = (
    AdvertiseKeys | CommitProof | Reveal | RevealBroadcast | GraphConfirm
    | NeighborKeys | ShareKeys | ShareKeysBroadcast | MaskedInput
    | ConsistencyRequest | ConsistencyConfirm | UnmaskRequest | UnmaskShares
)
MESSAGE_TYPES: tuple[type[Message], ...] = (
    AdvertiseKeys, CommitProof, Reveal, RevealBroadcast, GraphConfirm,
    NeighborKeys, ShareKeys, ShareKeysBroadcast, MaskedInput,
    ConsistencyRequest, ConsistencyConfirm, UnmaskRequest, UnmaskShares,
)
_BY_TAG: dict[int, type[Message]] = {cls.TAG: cls for cls in MESSAGE_TYPES}


def decode(data: bytes) -> Message:
    """Decode any protocol message by its type byte; raises only :class:`MalformedMessage`."""
    cls = _BY_TAG.get(peek_tag(data))
    if cls is None:
        raise MalformedMessage("unknown message type")
    msg: Message = cls.decode(data)
    return msg
