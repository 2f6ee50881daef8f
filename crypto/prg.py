"""Mask PRG: the AES-CTR keystream read as little-endian unsigned integers, and Z_{2^b} helpers.

Definition (tested against raw ``cryptography`` output): for a seed ``s`` of 16 or 32
bytes, ``expand(s, L, bits)`` is AES-CTR(key=s, initial counter block = 16 zero bytes,
128-bit big-endian counter) applied to ``L * bits / 8`` zero bytes, read as ``L``
little-endian ``uint{bits}`` words. Seeds are one-use, session-bound derived keys, so the
fixed initial counter block never repeats under a key.

Clients run :func:`expand_into` to add their self-mask and pairwise masks; the server runs
it with ``sign=-1`` to remove reconstructed masks. Arithmetic is numpy's native unsigned
wraparound, i.e. mod 2^32 or mod 2^64; a codec with ``b < 64`` bits lives in the low ``b``
bits of those words (reduce with :func:`reduce_mod` where needed; since 2^b divides the
word modulus, reducing once at the end equals reducing after every step).
No numpy or torch RNG is used anywhere here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from crypto.errors import ConfigError

SEED_SIZES = (16, 32)  # bytes: AES-128 or AES-256
_ZERO_BLOCK = bytes(16)
_CHUNK_BYTES = 256 << 10  # keystream chunk: 256 KiB stays in L2 cache for expand_into
_SLACK = 16  # update_into may require len(buf) >= len(data) + block_size - 1
_BATCH_BYTES = 1 << 20  # keystream rows summed per numpy reduction in expand_sum_into
_CTR_ZERO = modes.CTR(_ZERO_BLOCK)  # immutable; shared by every keystream of a seed
_DTYPES: dict[int, np.dtype] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}
_ZEROS = memoryview(bytes(_CHUNK_BYTES))  # AES-CTR input; a memoryview slices without a copy


def dtype_for_bits(bits: int) -> np.dtype:
    """The word dtype for a ring of ``bits`` bits: uint32 for 1..32, uint64 for 33..64."""
    if not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ConfigError(f"bits must be an integer in 1..64, got {bits!r}")
    return _DTYPES[32] if bits <= 32 else _DTYPES[64]


def _word_dtype(bits: int) -> np.dtype:
    if bits not in _DTYPES:
        raise ConfigError(f"PRG word width must be 32 or 64 bits, got {bits!r}")
    return _DTYPES[bits]


def _encryptor(key: bytes, counter_block: bytes = _ZERO_BLOCK) -> CipherContext:
    if len(key) not in SEED_SIZES:
        raise ConfigError(f"PRG seed must be 16 or 32 bytes, got {len(key)}")
    if len(counter_block) != 16:
        raise ConfigError(f"AES-CTR counter block must be 16 bytes, got {len(counter_block)}")
    return Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(counter_block))).encryptor()


def keystream(key: bytes, nbytes: int, counter_block: bytes = _ZERO_BLOCK) -> np.ndarray:
    """``nbytes`` bytes (uint8 array) of the AES-CTR keystream under ``key`` (16 or 32 bytes).

    ``counter_block`` is the initial 16-byte counter block, incremented as a 128-bit
    big-endian integer per block (NIST SP 800-38A). :func:`expand` is this with the
    all-zero block, read as words. The keystream is written straight into the array.
    """
    if nbytes < 0:
        raise ConfigError(f"nbytes must be >= 0, got {nbytes}")
    enc = _encryptor(key, counter_block)
    raw = np.empty(nbytes + _SLACK, dtype=np.uint8)
    mv = raw.data
    for start in range(0, nbytes, _CHUNK_BYTES):
        stop = min(start + _CHUNK_BYTES, nbytes)
        enc.update_into(_ZEROS[: stop - start], mv[start : stop + _SLACK])
    return raw[:nbytes]


def expand(seed: bytes, length: int, bits: int = 32) -> np.ndarray:
    """``length`` uniform uint32/uint64 words: the AES-CTR keystream under ``seed``, LE words.

    Client and server side (masks). No copies: the keystream is written into the result.
    """
    dtype = _word_dtype(bits)
    if length < 0:
        raise ConfigError(f"length must be >= 0, got {length}")
    raw = keystream(seed, length * dtype.itemsize)
    return raw.view(dtype.newbyteorder("<")).astype(dtype, copy=False)


def _check_out(out: np.ndarray, sign: int) -> None:
    """The in-place accumulators' argument checks (uint32/uint64, contiguous, writable)."""
    if sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign!r}")
    if out.dtype not in (_DTYPES[32], _DTYPES[64]):
        raise ConfigError(f"out must be uint32 or uint64, got {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ConfigError("out must be a C-contiguous, writable array")


def expand_into(seed: bytes, out: np.ndarray, sign: int) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) ``expand(seed, out.size)`` into ``out``.

    ``out`` is a C-contiguous, writable uint32 or uint64 array (any shape, read flat); it
    is changed in place mod 2^32 / 2^64. The keystream goes through one reusable buffer of
    256 KiB (cache-resident), so the full mask is never allocated.
    """
    _check_out(out, sign)
    if len(seed) not in SEED_SIZES:
        raise ConfigError(f"PRG seed must be 16 or 32 bytes, got {len(seed)}")
    _stream_into((seed,), out.reshape(-1), sign)


def _stream_into(seeds: Sequence[bytes], flat: np.ndarray, sign: int) -> None:
    """``flat += sign * sum_i expand(seeds[i], flat.size)``, each keystream streamed in
    chunks of up to 256 KiB through one buffer reused for every chunk and every seed (a
    fresh mask-sized array per seed was measured about 0.5 ms slower per client for 31
    masks of L = 10^5). Arguments already checked by the caller."""
    item = flat.dtype.itemsize
    chunk_words = max(1, min(flat.size, _CHUNK_BYTES // item))
    buf = np.empty(chunk_words * item + _SLACK, dtype=np.uint8)
    mv = buf.data
    le = flat.dtype.newbyteorder("<")
    op = np.add if sign == 1 else np.subtract
    aes, cipher = algorithms.AES, Cipher
    for seed in seeds:
        enc = cipher(aes(seed), _CTR_ZERO).encryptor()
        for start in range(0, flat.size, chunk_words):
            part = flat[start : start + chunk_words]
            nbytes = part.size * item
            enc.update_into(_ZEROS[:nbytes], mv[: nbytes + _SLACK])
            op(part, buf[:nbytes].view(le), out=part, casting="unsafe")




def expand_sum_into(seeds: Sequence[bytes], out: np.ndarray, sign: int) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) ``sum_i expand(seeds[i], out.size)`` into
    ``out`` in place, mod 2^32 / 2^64 (server side: removing thousands of short masks).

    Equals calling :func:`expand_into` once per seed. For short vectors the per-seed cost is
    the cipher set-up, not the keystream, so rows of keystream are written into one reused
    buffer of up to 1 MiB and summed with a single numpy reduction per buffer (wrapping in
    the word dtype, so the sum is exact mod the word size); vectors longer than a quarter
    of that buffer stream through one reused 256 KiB buffer instead (clients: the self
    mask and k pairwise masks of L = 10^5).
    """
    _check_out(out, sign)
    if any(len(seed) not in SEED_SIZES for seed in seeds):
        raise ConfigError("PRG seeds must be 16 or 32 bytes")
    flat = out.reshape(-1)
    row = flat.size * out.dtype.itemsize
    if not seeds or row == 0:
        return
    if 4 * row > _BATCH_BYTES:
        _stream_into(seeds, flat, sign)
        return
    rows = min(len(seeds), _BATCH_BYTES // row)
    buf = np.empty(rows * row + _SLACK, dtype=np.uint8)
    mv = buf.data
    zeros = _ZEROS[:row]
    words = buf[: rows * row].view(out.dtype.newbyteorder("<")).reshape(rows, flat.size)
    acc = np.empty(flat.size, dtype=out.dtype)
    op = np.add if sign == 1 else np.subtract
    aes, cipher = algorithms.AES, Cipher
    for start in range(0, len(seeds), rows):
        batch = seeds[start : start + rows]
        for r, seed in enumerate(batch):
            # each row's slack overlaps the next row, which is written afterwards
            cipher(aes(seed), _CTR_ZERO).encryptor().update_into(
                zeros, mv[r * row : (r + 1) * row + _SLACK])
        np.add.reduce(words[: len(batch)], axis=0, dtype=out.dtype, out=acc)
        op(flat, acc, out=flat, casting="unsafe")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype not in (_DTYPES[32], _DTYPES[64]) or a.dtype != b.dtype:
        raise ConfigError(f"need two uint32 or two uint64 arrays, got {a.dtype} and {b.dtype}")


def add_mod(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a + b`` mod 2^32 / 2^64 (same dtype); ``out=a`` works in place."""
    _check_pair(a, b)
    return np.add(a, b, out=out)


def sub_mod(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a - b`` mod 2^32 / 2^64 (same dtype); ``out=a`` works in place."""
    _check_pair(a, b)
    return np.subtract(a, b, out=out)


def neg_mod(a: np.ndarray) -> np.ndarray:
    """``-a`` mod 2^32 / 2^64, as a new array."""
    _check_pair(a, a)
    return np.negative(a)


def reduce_mod(a: np.ndarray, bits: int) -> np.ndarray:
    """``a`` mod 2^bits for a uint32/uint64 array (new array; ``bits`` in 1..word width)."""
    _check_pair(a, a)
    width = a.dtype.itemsize * 8
    if not isinstance(bits, int) or not 1 <= bits <= width:
        raise ConfigError(f"bits must be in 1..{width} for {a.dtype}, got {bits!r}")
    if bits == width:
        return a.copy()
    return np.bitwise_and(a, a.dtype.type((1 << bits) - 1))
