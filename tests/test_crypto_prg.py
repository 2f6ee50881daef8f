"""The mask PRG equals its definition (raw AES-CTR over zeros) and masks cancel exactly."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import ConfigError
from crypto.prg import (
    add_mod,
    dtype_for_bits,
    expand,
    expand_into,
    neg_mod,
    reduce_mod,
    sub_mod,
)

SEEDS = [bytes(16), bytes(range(16)), bytes(range(100, 132))]  # AES-128, AES-128, AES-256


def _raw_ctr(seed: bytes, nbytes: int) -> bytes:
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("length", [1, 7, 4096, 10**6])
@pytest.mark.parametrize("seed", SEEDS, ids=["zero16", "count16", "count32"])
def test_expand_equals_raw_aes_ctr(seed: bytes, length: int, bits: int) -> None:
    words = expand(seed, length, bits)
    assert words.dtype == dtype_for_bits(bits) and words.shape == (length,)
    raw = _raw_ctr(seed, length * bits // 8)
    expected = np.frombuffer(raw, dtype="<u4" if bits == 32 else "<u8")
    assert np.array_equal(words, expected)


def test_expand_reads_little_endian() -> None:
    seed = bytes(range(16))
    raw = _raw_ctr(seed, 8)
    assert int(expand(seed, 1, 32)[0]) == int.from_bytes(raw[:4], "little")
    assert int(expand(seed, 1, 64)[0]) == int.from_bytes(raw, "little")


def test_expand_is_a_prefix_stream_and_seed_dependent() -> None:
    long = expand(SEEDS[1], 5000, 32)
    assert np.array_equal(expand(SEEDS[1], 123, 32), long[:123])
    assert not np.array_equal(expand(SEEDS[2], 5000, 32), long)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("length", [0, 1, 5, 65536, 200_003])  # chunk is 65536 uint32
def test_expand_into_adds_and_subtracts_the_mask(bits: int, length: int) -> None:
    dtype = dtype_for_bits(bits)
    x = (np.arange(length, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).astype(dtype)
    y = x.copy()
    expand_into(SEEDS[2], y, +1)
    assert np.array_equal(y, x + expand(SEEDS[2], length, bits))
    expand_into(SEEDS[2], y, -1)
    assert np.array_equal(y, x)


def test_expand_into_works_on_2d_and_rejects_bad_outputs() -> None:
    x = np.zeros((3, 4), dtype=np.uint32)
    expand_into(SEEDS[0], x, 1)
    assert np.array_equal(x.reshape(-1), expand(SEEDS[0], 12, 32))
    with pytest.raises(ConfigError):
        expand_into(SEEDS[0], np.zeros(4, dtype=np.int64), 1)
    with pytest.raises(ConfigError):
        expand_into(SEEDS[0], np.zeros((4, 4), dtype=np.uint32)[:, 0], 1)
    with pytest.raises(ConfigError):
        expand_into(SEEDS[0], np.zeros(4, dtype=np.uint32), 2)


@pytest.mark.parametrize("seed_len", [0, 15, 24, 33])
def test_bad_seed_length_rejected(seed_len: int) -> None:
    with pytest.raises(ConfigError):
        expand(bytes(seed_len), 4)


def test_bad_width_and_length_rejected() -> None:
    with pytest.raises(ConfigError):
        expand(SEEDS[0], 4, bits=16)
    with pytest.raises(ConfigError):
        expand(SEEDS[0], -1)
    with pytest.raises(ConfigError):
        dtype_for_bits(65)


def test_modular_helpers_wrap() -> None:
    a = np.array([0, 1, 2**32 - 1], dtype=np.uint32)
    b = np.array([1, 2**32 - 1, 2**32 - 1], dtype=np.uint32)
    assert add_mod(a, b).tolist() == [1, 0, 2**32 - 2]
    assert sub_mod(a, b).tolist() == [2**32 - 1, 2, 0]
    assert neg_mod(a).tolist() == [0, 2**32 - 1, 1]
    out = a.copy()
    assert add_mod(out, b, out=out) is out and out.tolist() == [1, 0, 2**32 - 2]
    c = np.array([2**64 - 1], dtype=np.uint64)
    assert add_mod(c, c).tolist() == [2**64 - 2]
    assert reduce_mod(np.array([2**40 + 5], dtype=np.uint64), 40).tolist() == [5]
    assert reduce_mod(np.array([7], dtype=np.uint32), 2).tolist() == [3]
    with pytest.raises(ConfigError):
        add_mod(a, c)
    with pytest.raises(ConfigError):
        reduce_mod(a, 33)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300),
    n_clients=st.integers(2, 5),
    bits=st.sampled_from([20, 32, 48, 64]),
    seed_bytes=st.binary(min_size=32, max_size=32),
)
def test_masks_cancel_exactly(
    values: list[int], n_clients: int, bits: int, seed_bytes: bytes
) -> None:
    """Pairwise (+ for u<v, - for u>v) and self masks removed: the exact sum mod 2^bits."""
    dtype = dtype_for_bits(bits)
    raw = [
        np.array([(v * (u + 1)) % 2**64 for v in values], dtype=np.uint64) for u in range(n_clients)
    ]
    inputs = [reduce_mod(r, bits).astype(dtype) for r in raw]
    pair_seed = {
        (u, v): bytes([u, v]) + seed_bytes[2:] for u in range(n_clients) for v in range(n_clients)
    }
    self_seed = {u: bytes([255, u]) + seed_bytes[2:] for u in range(n_clients)}
    total = np.zeros(len(values), dtype=dtype)
    for u, x in enumerate(inputs):
        y = x.copy()
        expand_into(self_seed[u], y, +1)
        for v in range(n_clients):
            if v != u:
                expand_into(pair_seed[(min(u, v), max(u, v))], y, +1 if u < v else -1)
        assert not np.array_equal(y, x)  # the upload is actually masked
        add_mod(total, y, out=total)
    for u in range(n_clients):
        expand_into(self_seed[u], total, -1)
    result = reduce_mod(total, bits)
    assert int(result[0]) == sum(int(x[0]) for x in inputs) % 2**bits  # big-int check
    plain = np.zeros(len(values), dtype=dtype)
    for x in inputs:
        add_mod(plain, x, out=plain)
    assert np.array_equal(result, reduce_mod(plain, bits))
