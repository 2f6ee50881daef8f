"""The one place that draws randomness for secrets and noise.

* :func:`random_bytes` reads the operating system's CSPRNG (``os.urandom``); keys, mask
  seeds, Shamir coefficients and hardened-mode noise keys come from here and nowhere else.
* :class:`KeystreamRNG` turns a 32-byte key into a stream of random numbers by reading the
  AES-256-CTR keystream (``cryptography``), so bulk sampling runs at AES speed. Built with
  :meth:`KeystreamRNG.hardened` its key comes from the OS CSPRNG and it cannot be saved or
  reproduced; built with :meth:`KeystreamRNG.from_seed` it is reproducible (tests and
  experiments only) and its position can be saved and restored for checkpoints.

numpy's and torch's generators are not used for secrets or noise: they are not
cryptographic, and seeding them from a key folded to a few bits is a known SecAgg bug.
The AES-CTR reader is written here because no maintained package exposes a numpy-speed
CSPRNG stream with a restorable position.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.errors import ConfigError

_KEY_BYTES = 32
_BLOCK = 16


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG."""
    if n < 0:
        raise ConfigError(f"random_bytes: n must be >= 0, got {n}")
    return os.urandom(n)


@dataclass(frozen=True, slots=True)
class RNGState:
    """Restorable position of a seeded :class:`KeystreamRNG` (never exists for hardened)."""

    key: bytes
    offset: int  # bytes of keystream consumed


class KeystreamRNG:
    """Random numbers read from the AES-256-CTR keystream under a 32-byte key.

    Uniform integers are exact (rejection sampling, no modulo bias); floats in [0, 1)
    carry 53 random bits; normals use the Box-Muller transform on those floats.
    """

    __slots__ = ("_key", "_offset", "_enc", "hardened_mode")

    def __init__(self, key: bytes, *, hardened_mode: bool, offset: int = 0) -> None:
        if len(key) != _KEY_BYTES:
            raise ConfigError(f"KeystreamRNG key must be {_KEY_BYTES} bytes, got {len(key)}")
        if offset < 0:
            raise ConfigError("KeystreamRNG offset must be >= 0")
        self._key = bytes(key)
        self.hardened_mode = hardened_mode
        self._seek(offset)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def hardened(cls) -> KeystreamRNG:
        """A stream keyed from the OS CSPRNG; not reproducible, not saveable."""
        return cls(random_bytes(_KEY_BYTES), hardened_mode=True)

    @classmethod
    def from_seed(cls, seed: int | bytes, label: str = "") -> KeystreamRNG:
        """A reproducible stream for tests and experiments, keyed by SHA-256(label, seed)."""
        if isinstance(seed, int):
            if seed < 0:
                raise ConfigError(f"seed must be >= 0, got {seed}")
            seed_b = seed.to_bytes((seed.bit_length() + 7) // 8 or 1, "big")
        else:
            seed_b = bytes(seed)
        lab = label.encode()
        key = hashlib.sha256(
            b"secure_fed/keystream-rng/v1" + len(lab).to_bytes(4, "big") + lab + seed_b
        ).digest()
        return cls(key, hardened_mode=False)

    def spawn(self, label: str) -> KeystreamRNG:
        """An independent child stream named ``label`` (same mode as the parent).

        A hardened parent gives a child with a fresh OS key; a seeded parent derives the
        child's key from its own key and the label, so children do not depend on how much
        of the parent was consumed.
        """
        if self.hardened_mode:
            return KeystreamRNG.hardened()
        lab = label.encode()
        key = hashlib.sha256(
            b"secure_fed/keystream-rng/spawn/v1" + self._key + len(lab).to_bytes(4, "big") + lab
        ).digest()
        return KeystreamRNG(key, hardened_mode=False)

    # -- state ----------------------------------------------------------------------
    def get_state(self) -> RNGState:
        """Position of a seeded stream, for checkpoints. Hardened streams refuse."""
        if self.hardened_mode:
            raise ConfigError("a hardened KeystreamRNG has no saveable state (its key is secret)")
        return RNGState(self._key, self._offset)

    @classmethod
    def from_state(cls, state: RNGState) -> KeystreamRNG:
        return cls(state.key, hardened_mode=False, offset=state.offset)

    def _seek(self, offset: int) -> None:
        block, skip = divmod(offset, _BLOCK)
        nonce = (block % (1 << 128)).to_bytes(_BLOCK, "big")
        self._enc = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        self._offset = block * _BLOCK
        if skip:
            self.bytes(skip)

    # -- sampling -------------------------------------------------------------------
    def bytes(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        out = self._enc.update(bytes(n))
        self._offset += n
        return out

    def uint64(self, n: int) -> np.ndarray:
        """``n`` independent uniform uint64 values (little-endian keystream words)."""
        return np.frombuffer(self.bytes(8 * n), dtype="<u8").astype(np.uint64, copy=False)

    def uint32(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(4 * n), dtype="<u4").astype(np.uint32, copy=False)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` floats uniform on [0, 1) with 53 random bits each."""
        return (self.uint64(n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def uniform_open(self, n: int) -> np.ndarray:
        """``n`` floats uniform on (0, 1): safe to take logarithms of."""
        return ((self.uint64(n) >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` standard normal float64 samples (Box-Muller)."""
        m = (n + 1) // 2
        u1 = self.uniform_open(m)
        u2 = self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        theta = 2.0 * np.pi * u2
        return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]

    def integers(self, low: int, high: int, n: int) -> np.ndarray:
        """``n`` integers uniform on [low, high) without modulo bias (int64)."""
        span = high - low
        if span <= 0 or span > (1 << 62):
            raise ConfigError(f"integers: need 0 < high - low <= 2^62, got [{low}, {high})")
        bits = max(1, (span - 1).bit_length())
        mask = np.uint64((1 << bits) - 1)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            need = n - filled
            cand = self.uint64(need + need // 2 + 8) & mask
            cand = cand[cand < np.uint64(span)][:need]
            out[filled : filled + cand.size] = cand.astype(np.int64)
            filled += cand.size
        return out + low

    def bernoulli(self, p: float | np.ndarray, n: int) -> np.ndarray:
        """``n`` Bernoulli(p) draws as a bool array (p scalar or length-n array)."""
        return self.uniform(n) < np.asarray(p, dtype=np.float64)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of range(n) (Fisher-Yates on exact integers)."""
        perm = np.arange(n)
        for i in range(n - 1, 0, -1):
            j = int(self.integers(0, i + 1, 1)[0])
            perm[i], perm[j] = perm[j], perm[i]
        return perm
