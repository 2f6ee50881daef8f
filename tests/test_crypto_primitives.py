"""Key agreement, HKDF labels, AES-GCM and Ed25519 wrappers: behaviour beyond the KATs."""

from __future__ import annotations

import hmac

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.aead import open_sealed, seal
from crypto.agreement import (
    LOW_ORDER_U,
    KeyPair,
    Label,
    canonical_public,
    canonical_publics,
    check_public_key,
    derive_key,
    generate_keypair,
    hkdf_sha256,
    shared_secret,
)
from crypto.errors import ConfigError, CryptoError, DecryptionError, SignatureError
from crypto.mac import mac, verify_mac
from crypto.signing import encode_fields, generate_signing_keypair, sign, verify


def test_keypairs_agree_and_are_fresh() -> None:
    a, b = generate_keypair(), generate_keypair()
    assert a.private != b.private and a.public != b.public
    assert shared_secret(a.private, b.public) == shared_secret(b.private, a.public)
    assert generate_keypair(a.private) == a
    assert a.private.hex() not in repr(a)


@pytest.mark.parametrize("low_order", [bytes(32), (1).to_bytes(32, "little")])
def test_all_zero_shared_secret_rejected(low_order: bytes) -> None:
    with pytest.raises(CryptoError):
        shared_secret(generate_keypair().private, low_order)


_P = 2**255 - 19


def _encodings(u: int) -> list[bytes]:
    """Every 32-byte encoding of u-coordinate u: u, u + p (if < 2^255), each with or
    without the high bit."""
    vals = [u] + ([u + _P] if u + _P < 2**255 else [])
    return [(v | hb).to_bytes(32, "little") for v in vals for hb in (0, 1 << 255)]


def test_low_order_list_is_what_openssl_refuses_in_exchange() -> None:
    """The hand-written list is needed (the library parses every one of these keys) and
    right (the library's exchange refuses each: the shared secret is all zeros)."""
    sk = X25519PrivateKey.from_private_bytes(generate_keypair().private)
    for u in LOW_ORDER_U:
        for raw in _encodings(u):
            pk = X25519PublicKey.from_public_bytes(raw)  # parsing accepts it
            with pytest.raises(ValueError):
                sk.exchange(pk)
            with pytest.raises(CryptoError):
                check_public_key(raw)


def test_non_canonical_keys_refused_and_normalised() -> None:
    kp, other = generate_keypair(), generate_keypair()
    check_public_key(kp.public)  # a fresh key passes
    u = int.from_bytes(kp.public, "little")
    high = (u | 1 << 255).to_bytes(32, "little")
    with pytest.raises(CryptoError):
        check_public_key(high)
    # the library accepts the high-bit form and agrees on the same secret: a duplicate
    assert shared_secret(other.private, high) == shared_secret(other.private, kp.public)
    assert canonical_public(high) == kp.public
    small = (5).to_bytes(32, "little")
    wrapped = (5 + _P).to_bytes(32, "little")
    with pytest.raises(CryptoError):
        check_public_key(wrapped)
    assert canonical_public(wrapped) == small
    rows = np.frombuffer(high + wrapped + kp.public, dtype=np.uint8).reshape(3, 32)
    assert canonical_publics(rows).tobytes() == kp.public + small + kp.public


def test_bad_key_lengths_rejected() -> None:
    with pytest.raises(ConfigError):
        generate_keypair(bytes(31))
    with pytest.raises(CryptoError):
        shared_secret(bytes(32), bytes(31))
    with pytest.raises(ConfigError):
        KeyPair(bytes(32), bytes(33))


def test_derive_key_binds_label_and_context() -> None:
    secret = bytes(range(32))
    keys = {derive_key(secret, label, b"round-1") for label in Label}
    assert len(keys) == len(Label)
    assert len({label.value for label in Label}) == len(Label)
    k = derive_key(secret, Label.PAIRWISE_MASK, b"round-1")
    assert k != derive_key(secret, Label.PAIRWISE_MASK, b"round-2")
    assert k != derive_key(bytes(32), Label.PAIRWISE_MASK, b"round-1")
    assert len(derive_key(secret, Label.SESSION, b"", length=16)) == 16
    # definition: HKDF-SHA256(secret, salt=None, info=label || len32(context) || context)
    info = Label.PAIRWISE_MASK.value + (7).to_bytes(4, "big") + b"round-1"
    assert k == hkdf_sha256(secret, None, info, 32)
    with pytest.raises(ConfigError):
        derive_key(secret, Label.SESSION, b"", length=0)
    with pytest.raises(ConfigError):
        derive_key(secret, b"secure_fed/v1/session", b"")  # type: ignore[arg-type]


def test_aead_roundtrip_and_every_tamper_fails_the_same_way() -> None:
    key, nonce, ad = bytes(range(32)), bytes(12), b"round=1|u=3|v=7"
    sealed = seal(key, nonce, b"share bytes", ad)
    assert open_sealed(key, nonce, sealed, ad) == b"share bytes"
    attempts = [
        (bytes(32), nonce, sealed, ad),
        (key, b"\x01" + nonce[1:], sealed, ad),
        (key, nonce, b"\x00" + sealed[1:], ad),
        (key, nonce, sealed, ad + b"x"),
        (key, nonce, sealed[:10], ad),
        (key[:16], nonce, sealed, ad),
        (key, nonce[:8], sealed, ad),
    ]
    messages = set()
    for args in attempts:
        with pytest.raises(DecryptionError) as err:
            open_sealed(*args)
        messages.add(str(err.value))
    assert messages == {"decryption failed"}


def test_aead_rejects_bad_parameters_on_seal() -> None:
    with pytest.raises(ConfigError):
        seal(bytes(24), bytes(12), b"", b"")
    with pytest.raises(ConfigError):
        seal(bytes(16), bytes(16), b"", b"")


@settings(max_examples=50, deadline=None)
@given(
    a=st.lists(st.binary(max_size=8), max_size=4),
    b=st.lists(st.binary(max_size=8), max_size=4),
)
def test_encode_fields_is_injective(a: list[bytes], b: list[bytes]) -> None:
    assert (encode_fields(*a) == encode_fields(*b)) == (a == b)


def test_sign_verify_fields() -> None:
    keys = generate_signing_keypair()
    sig = sign(keys.private, b"ab", b"c")
    verify(keys.public, sig, b"ab", b"c")
    for fields in [(b"a", b"bc"), (b"abc",), (b"ab", b"c", b"")]:
        with pytest.raises(SignatureError):
            verify(keys.public, sig, *fields)
    with pytest.raises(SignatureError):
        verify(generate_signing_keypair().public, sig, b"ab", b"c")
    with pytest.raises(SignatureError):
        verify(keys.public, sig[:63], b"ab", b"c")
    with pytest.raises(ConfigError):
        encode_fields("text")  # type: ignore[arg-type]
    assert keys.private.hex() not in repr(keys)


# -- MAC (survivor confirmations) ----------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(max_size=40), max_size=5))
def test_mac_is_hmac_sha256_of_the_encoded_fields(key: bytes, fields: list[bytes]) -> None:
    tag = mac(key, *fields)
    assert tag == hmac.digest(key, encode_fields(*fields), "sha256")  # the stdlib's HMAC
    verify_mac(key, tag, *fields)


def test_verify_mac_refuses_any_change() -> None:
    key, fields = bytes(range(32)), (b"tag", b"session", b"\x00\x00\x00\x01")
    tag = mac(key, *fields)
    bad_key = bytes([key[0] ^ 1]) + key[1:]
    for args in [(bad_key, tag, *fields), (key, tag[:-1] + bytes([tag[-1] ^ 1]), *fields),
                 (key, tag[:16], *fields), (key, tag, *fields[:2], b"\x00\x00\x00\x02"),
                 (key, tag, b"tagsession", *fields[2:])]:
        with pytest.raises(SignatureError):
            verify_mac(*args)
    with pytest.raises(ConfigError):
        mac(key[:31], *fields)
