"""crypto/rng.py: the keystream RNG is reproducible when seeded, unsaveable when hardened,
and its samplers have the right distributions (seeded, so these checks are deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from crypto.errors import ConfigError
from crypto.rng import KeystreamRNG, random_bytes


def test_random_bytes() -> None:
    assert len(random_bytes(0)) == 0 and len(random_bytes(33)) == 33
    assert random_bytes(32) != random_bytes(32)
    with pytest.raises(ConfigError):
        random_bytes(-1)


def test_stream_is_aes256_ctr_of_its_key() -> None:
    rng = KeystreamRNG(bytes(range(32)), hardened_mode=False)
    enc = Cipher(algorithms.AES(bytes(range(32))), modes.CTR(bytes(16))).encryptor()
    raw = enc.update(bytes(64))
    assert rng.bytes(24) == raw[:24]
    assert rng.uint64(1).tolist() == [int.from_bytes(raw[24:32], "little")]
    assert rng.uint32(2).tolist() == [
        int.from_bytes(raw[32:36], "little"),
        int.from_bytes(raw[36:40], "little"),
    ]


def test_seeded_streams_are_reproducible_and_label_separated() -> None:
    a = KeystreamRNG.from_seed(42, "noise")
    b = KeystreamRNG.from_seed(42, "noise")
    assert np.array_equal(a.standard_normal(100), b.standard_normal(100))
    assert a.bytes(16) != KeystreamRNG.from_seed(42, "masks").bytes(16)
    other_seed = KeystreamRNG.from_seed(43, "noise")
    assert other_seed.bytes(16) != KeystreamRNG.from_seed(42, "noise").bytes(16)
    assert KeystreamRNG.from_seed(b"\x2a").bytes(8) == KeystreamRNG.from_seed(42).bytes(8)
    with pytest.raises(ConfigError):
        KeystreamRNG.from_seed(-1)


@pytest.mark.parametrize("skip", [0, 5, 16, 37])
def test_state_restore_equals_continuing(skip: int) -> None:
    rng = KeystreamRNG.from_seed(7, "ckpt")
    rng.bytes(skip)
    state = rng.get_state()
    assert state.offset == skip
    cont = (rng.uniform(50), rng.integers(0, 10, 20), rng.bytes(9))
    again = KeystreamRNG.from_state(state)
    redo = (again.uniform(50), again.integers(0, 10, 20), again.bytes(9))
    assert np.array_equal(cont[0], redo[0]) and np.array_equal(cont[1], redo[1])
    assert cont[2] == redo[2]


def test_hardened_refuses_state_and_is_not_reproducible() -> None:
    rng = KeystreamRNG.hardened()
    with pytest.raises(ConfigError):
        rng.get_state()
    assert rng.hardened_mode and rng.spawn("x").hardened_mode
    assert rng.bytes(32) != KeystreamRNG.hardened().bytes(32)
    with pytest.raises(ConfigError):
        rng.spawn("child").get_state()


def test_spawn_is_deterministic_and_independent_of_parent_use() -> None:
    p1, p2 = KeystreamRNG.from_seed(1), KeystreamRNG.from_seed(1)
    p2.bytes(1000)
    assert p1.spawn("client-3").bytes(32) == p2.spawn("client-3").bytes(32)
    assert p1.spawn("client-3").bytes(32) != p1.spawn("client-4").bytes(32)
    assert p1.spawn("a").bytes(32) != p1.bytes(32)


def test_bad_construction_rejected() -> None:
    with pytest.raises(ConfigError):
        KeystreamRNG(bytes(16), hardened_mode=False)
    with pytest.raises(ConfigError):
        KeystreamRNG(bytes(32), hardened_mode=False, offset=-1)
    with pytest.raises(ConfigError):
        KeystreamRNG.from_seed(0).bytes(-1)


def test_uniform_is_uniform_on_unit_interval() -> None:
    rng = KeystreamRNG.from_seed(11, "uniform")
    u = rng.uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    v = rng.uniform_open(200_000)
    assert v.min() > 0.0 and v.max() < 1.0
    assert stats.kstest(v, "uniform").pvalue > 1e-4


def test_standard_normal_is_normal() -> None:
    z = KeystreamRNG.from_seed(12, "normal").standard_normal(200_001)
    assert z.shape == (200_001,) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1.0) < 0.02  # ~4.5 sigma
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert abs(stats.kurtosis(z)) < 0.05


def test_integers_span_3_has_no_modulo_bias() -> None:
    rng = KeystreamRNG.from_seed(13, "span3")
    x = rng.integers(-1, 2, 300_000)
    assert x.dtype == np.int64 and set(np.unique(x).tolist()) == {-1, 0, 1}
    counts = np.bincount(x + 1)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_integers_are_rejection_samples_of_masked_words() -> None:
    """Each output is a 2-bit word below 3 taken in stream order, never a word reduced mod 3."""
    ref = KeystreamRNG.from_seed(14, "span3")
    words = ref.uint64(1508) & np.uint64(3)
    expected = words[words < np.uint64(3)][:1000].astype(np.int64)
    got = KeystreamRNG.from_seed(14, "span3").integers(0, 3, 1000)
    assert np.array_equal(got, expected)


def test_integers_edge_cases() -> None:
    rng = KeystreamRNG.from_seed(15)
    assert rng.integers(5, 6, 10).tolist() == [5] * 10
    big = rng.integers(0, 2**62, 1000)
    assert big.min() >= 0 and big.max() < 2**62 and big.max() > 2**61
    with pytest.raises(ConfigError):
        rng.integers(3, 3, 1)
    with pytest.raises(ConfigError):
        rng.integers(0, 2**62 + 1, 1)


def test_bernoulli_and_permutation() -> None:
    rng = KeystreamRNG.from_seed(16)
    b = rng.bernoulli(0.2, 100_000)
    assert b.dtype == np.bool_ and abs(b.mean() - 0.2) < 0.006
    p = np.array([0.0, 1.0] * 500)
    assert np.array_equal(rng.bernoulli(p, 1000), p.astype(bool))
    perm = rng.permutation(50)
    assert sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))
    assert np.array_equal(
        KeystreamRNG.from_seed(3).permutation(20), KeystreamRNG.from_seed(3).permutation(20)
    )
