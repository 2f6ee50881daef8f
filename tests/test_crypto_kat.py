"""Known-answer tests: standard vectors from tests/vectors/ run through our crypto wrappers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto.aead import open_sealed, seal
from crypto.agreement import generate_keypair, hkdf_sha256, shared_secret
from crypto.errors import DecryptionError, SignatureError
from crypto.prg import keystream
from crypto.signing import generate_signing_keypair, sign_raw, verify_raw

VECTORS = Path(__file__).parent / "vectors"
h = bytes.fromhex


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


X25519 = _load("x25519_rfc7748.json")
HKDF = _load("hkdf_sha256_rfc5869.json")
CTR = _load("aes128_ctr_sp800_38a.json")
ED25519 = _load("ed25519_rfc8032.json")
GCM = _load("aes_gcm_nist.json")


@pytest.mark.parametrize("case", X25519["scalar_mult"], ids=["5.2-1", "5.2-2"])
def test_x25519_scalar_mult_rfc7748_5_2(case: dict[str, str]) -> None:
    assert shared_secret(h(case["scalar"]), h(case["u"])) == h(case["output"])


def test_x25519_iterated_rfc7748_5_2() -> None:
    vec = X25519["iterated"]
    k = u = h(vec["start"])
    for i in range(1, 1001):
        k, u = shared_secret(k, u), k
        if i == 1:
            assert k == h(vec["after_1"])
    assert k == h(vec["after_1000"])


def test_x25519_diffie_hellman_rfc7748_6_1() -> None:
    vec = X25519["diffie_hellman"]
    alice = generate_keypair(h(vec["alice_private"]))
    bob = generate_keypair(h(vec["bob_private"]))
    assert alice.public == h(vec["alice_public"])
    assert bob.public == h(vec["bob_public"])
    assert shared_secret(alice.private, bob.public) == h(vec["shared"])
    assert shared_secret(bob.private, alice.public) == h(vec["shared"])


@pytest.mark.parametrize("case", HKDF["cases"], ids=lambda c: c["name"])
def test_hkdf_sha256_rfc5869(case: dict[str, Any]) -> None:
    okm = hkdf_sha256(h(case["ikm"]), h(case["salt"]), h(case["info"]), case["length"])
    assert okm == h(case["okm"])


def test_aes128_ctr_sp800_38a_f51() -> None:
    plain = np.frombuffer(h("".join(CTR["plaintext"])), dtype=np.uint8)
    stream = keystream(h(CTR["key"]), plain.size, h(CTR["initial_counter"]))
    assert (plain ^ stream).tobytes() == h("".join(CTR["ciphertext"]))


@pytest.mark.parametrize("case", ED25519["cases"], ids=lambda c: c["name"])
def test_ed25519_rfc8032_7_1(case: dict[str, str]) -> None:
    keys = generate_signing_keypair(h(case["secret_key"]))
    assert keys.public == h(case["public_key"])
    sig = sign_raw(keys.private, h(case["message"]))
    assert sig == h(case["signature"])
    verify_raw(keys.public, sig, h(case["message"]))
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError):
        verify_raw(keys.public, bad, h(case["message"]))


@pytest.mark.parametrize("case", GCM["cases"], ids=lambda c: c["name"])
def test_aes_gcm_nist(case: dict[str, str]) -> None:
    key, iv, aad = h(case["key"]), h(case["iv"]), h(case["aad"])
    sealed = seal(key, iv, h(case["plaintext"]), aad)
    assert sealed == h(case["ciphertext"]) + h(case["tag"])
    assert open_sealed(key, iv, sealed, aad) == h(case["plaintext"])
    with pytest.raises(DecryptionError):
        open_sealed(key, iv, sealed[:-1] + bytes([sealed[-1] ^ 0x80]), aad)
