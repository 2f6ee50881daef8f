"""Key agreement, HKDF labels, AES-GCM and Ed25519 wrappers: behaviour beyond the KATs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.aead import open_sealed, seal
from crypto.agreement import (
    KeyPair,
    Label,
    derive_key,
    generate_keypair,
    hkdf_sha256,
    shared_secret,
)
from crypto.errors import ConfigError, CryptoError, DecryptionError, SignatureError
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
