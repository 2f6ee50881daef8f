"""Session binding: the session id and the contexts that bind keys, seeds, tags and signatures.

Both sides compute these. The session id is SHA-256 over the protocol version, the round
id, the whole public config (sorted cohort ids included) and every advertised public key
(sorted by client id); every HKDF context, AEAD associated data and survivor
confirmation below contains it, so nothing from another round or session verifies here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from crypto.signing import encode_fields
from protocol.config import PROTOCOL_VERSION, ProtocolConfig

SESSION_ID_BYTES = 32
_ADVERTISE_TAG = b"secure_fed/advertise-keys/v2"
_CONFIRM_TAG = b"secure_fed/survivor-confirmation/v2"
_SURVIVORS_TAG = b"secure_fed/survivor-set/v1"
_SHARE_AD_TAG = b"secure_fed/share-ciphertext/v1"
_PAIR = struct.Struct(">II")  # two 4-byte big-endian client ids
_AD_HEAD = encode_fields(_SHARE_AD_TAG)  # the first field of every share's associated data
_AD_IDS = struct.Struct(">IIII")  # two length-prefixed 4-byte ids


def u32(value: int) -> bytes:
    """4-byte big-endian client id."""
    return value.to_bytes(4, "big")


def session_id(config: ProtocolConfig, key_records: bytes) -> bytes:
    """SHA-256 over version, round, config digest (it holds the sorted cohort ids) and the
    round's advertised keys: ``key_records`` is the round root (which fixes every
    committed key and commitment, :func:`protocol.commitments.round_root`) followed by
    the graph seed."""
    h = hashlib.sha256(b"secure_fed/session/v1")
    h.update(PROTOCOL_VERSION.to_bytes(2, "big") + config.round_id.to_bytes(8, "big"))
    h.update(config.digest())
    h.update(len(key_records).to_bytes(8, "big") + key_records)
    return h.digest()


def advertise_fields(config: ProtocolConfig, sender: int, c_pk: bytes, s_pk: bytes,
                     commitment: bytes) -> tuple[bytes, ...]:
    """Fields a client signs with its long-term Ed25519 key when advertising its keys and
    its graph commitment."""
    return (_ADVERTISE_TAG, config.digest(), u32(sender), c_pk, s_pk, commitment)


def survivors_digest(survivors: Sequence[int]) -> bytes:
    """SHA-256 of a survivor set's encoding (:func:`encode_ids`): what a confirmation
    authenticates. A client hashes the set once and MACs the 32-byte digest to each of its
    k neighbours, instead of MACing the whole O(n) encoding k times (at n = 10,000 that
    is 38 kB per tag); a different set with the same digest would be a SHA-256 collision."""
    return hashlib.sha256(_SURVIVORS_TAG + encode_ids(survivors)).digest()


def confirmation_fields(session: bytes, sender: int, recipient: int,
                        digest: bytes) -> tuple[bytes, ...]:
    """Fields ``sender`` authenticates (HMAC under the pair's confirmation key) to tell
    neighbour ``recipient`` which survivor set it was shown, given as
    :func:`survivors_digest`. Both ids are bound, so a tag is never valid in the other
    direction (the key is the same both ways)."""
    return (_CONFIRM_TAG, session, u32(sender), u32(recipient), digest)


def encode_ids(ids: Sequence[int]) -> bytes:
    """4-byte big-endian ids, concatenated."""
    return np.asarray(ids, dtype=">u4").tobytes()


def share_associated_data(session: bytes, sender: int, recipient: int) -> bytes:
    """AEAD associated data of one share ciphertext (binds session, u and v):
    ``encode_fields(tag, session, u32(sender), u32(recipient))``, written out directly
    (a client builds two per neighbour a round; tests check the bytes are equal)."""
    return b"".join((_AD_HEAD, len(session).to_bytes(4, "big"), session,
                     _AD_IDS.pack(4, sender, 4, recipient)))


def pairwise_context(session: bytes, a: int, b: int) -> bytes:
    """HKDF context of the pairwise mask seed of clients a and b (symmetric in a, b)."""
    lo, hi = min(a, b), max(a, b)
    return session + u32(lo) + u32(hi)


def pairwise_contexts(session: bytes, me: int, peers: Sequence[int]) -> list[bytes]:
    """:func:`pairwise_context` of ``me`` with each of ``peers`` (batch form, same bytes)."""
    pack = _PAIR.pack
    return [session + (pack(me, v) if me < v else pack(v, me)) for v in peers]


def self_mask_context(session: bytes, owner: int) -> bytes:
    """HKDF context of the self-mask seed of ``owner``."""
    return session + u32(owner)
