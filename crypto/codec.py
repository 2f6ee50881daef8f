"""Fixed-point codec between float vectors and the ring Z_{2^b} of secure aggregation.

Client side: :meth:`FixedPointCodec.encode` clips every entry to ``[-clip, clip]`` (input
units), scales by ``gamma`` (integer units per input unit), rounds stochastically (unbiased:
``floor(y) + Bernoulli(y - floor(y))`` from the given :class:`KeystreamRNG`) and maps the
signed integer to ``Z_{2^bits}`` in two's complement. Server side:
:meth:`FixedPointCodec.decode_sum` maps the sum of ``n`` encodings back to floats.

The sum decodes exactly (up to rounding) only while it cannot wrap: with
``M = ceil(clip * gamma)`` the largest encoded magnitude, a cohort of ``n`` is safe iff
``n * M < 2^(bits-1)``. :meth:`FixedPointCodec.check_cohort` refuses a config before the
round starts. Integer noise added after encoding (dp/) needs its own headroom on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crypto.errors import ConfigError, EncodingOverflow
from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG

_MAX_SCALED = float(1 << 62)  # clip * gamma must stay well inside int64
_FLOAT_SLACK = 2.0**-50  # relative float64 error allowance in error_bound


def _max_entry(clip: float, gamma: float) -> int:
    return math.ceil(clip * gamma)


def can_overflow(n: int, clip: float, gamma: float, bits: int) -> bool:
    """Whether a sum of ``n`` encodings (clip, gamma, bits) could leave ``(-2^(bits-1), 2^(bits-1))``."""
    if n < 1:
        raise ConfigError(f"cohort size n must be >= 1, got {n}")
    return n * _max_entry(clip, gamma) >= 1 << (bits - 1)


@dataclass(frozen=True, slots=True)
class FixedPointCodec:
    """Clip to ``[-clip, clip]``, scale by ``gamma``, round stochastically, wrap mod 2^bits.

    ``bits`` in 2..64 (uint32 words for bits <= 32, else uint64), ``gamma`` > 0 in integer
    units per input unit, ``clip`` > 0 in input units.
    """

    bits: int
    gamma: float
    clip: float

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 64:
            raise ConfigError(f"codec bits must be an integer in 2..64, got {self.bits!r}")
        for name, val in (("gamma", self.gamma), ("clip", self.clip)):
            if not (math.isfinite(val) and val > 0):
                raise ConfigError(f"codec {name} must be a finite number > 0, got {val!r}")
        if self.clip * self.gamma >= _MAX_SCALED:
            raise ConfigError("codec clip * gamma must be < 2^62: lower gamma or clip")

    @property
    def dtype(self) -> np.dtype:
        """Word dtype of encodings: uint32 if bits <= 32, else uint64."""
        return dtype_for_bits(self.bits)

    def encode(self, x: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        """Encode a float array (any shape) to words mod 2^bits of the same shape (client)."""
        arr = np.asarray(x, dtype=np.float64)
        if np.isnan(arr).any():
            raise ConfigError("codec input contains NaN")
        y = np.clip(arr, -self.clip, self.clip) * self.gamma
        low = np.floor(y)
        up = rng.bernoulli((y - low).reshape(-1), y.size).reshape(y.shape)
        ints = low.astype(np.int64) + up
        if self.bits < 64:
            ints &= np.int64((1 << self.bits) - 1)
        return ints.view(np.uint64).astype(self.dtype)

    def decode_sum(self, v: np.ndarray, n: int) -> np.ndarray:
        """Decode the mod-2^bits sum of ``n`` encodings to float64 input units (server)."""
        self.check_cohort(n)
        w = np.asarray(v)
        if w.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise ConfigError(f"decode_sum needs uint32 or uint64 words, got {w.dtype}")
        w = w.astype(np.uint64)
        if self.bits < 64:
            w &= np.uint64((1 << self.bits) - 1)
            signed = w.astype(np.int64)
            signed[w >= np.uint64(1 << (self.bits - 1))] -= np.int64(1 << (self.bits - 1)) * 2
        else:
            signed = w.view(np.int64)
        return signed.astype(np.float64) / self.gamma

    def max_abs_sum(self, n: int) -> int:
        """Largest magnitude (integer units) a sum of ``n`` encodings can reach."""
        if n < 1:
            raise ConfigError(f"cohort size n must be >= 1, got {n}")
        return n * _max_entry(self.clip, self.gamma)

    def check_cohort(self, n: int) -> None:
        """Raise :class:`EncodingOverflow` if a sum of ``n`` encodings could wrap the ring."""
        if not can_overflow(n, self.clip, self.gamma, self.bits):
            return
        half = 1 << (self.bits - 1)
        per = _max_entry(self.clip, self.gamma)
        fixes = [f"raise bits to >= {(n * per).bit_length() + 1}"]
        if (half - 1) // n >= 1:
            fixes.append(f"lower gamma to <= {((half - 1) // n) / self.clip} (or clip)")
        if (half - 1) // per >= 1:
            fixes.append(f"shrink the cohort to <= {(half - 1) // per}")
        raise EncodingOverflow(
            f"a cohort of {n} can overflow Z_2^{self.bits}: n * ceil(clip * gamma) = {n * per}"
            f" >= 2^{self.bits - 1}; " + ", or ".join(fixes)
        )

    def error_bound(self, n: int) -> float:
        """Worst-case |decode_sum - sum of clipped inputs| for ``n`` encodings (input units).

        Each entry rounds by less than one integer unit (1/gamma input units); the rest
        is float64 slack proportional to the largest possible sum.
        """
        return n / self.gamma + n * self.clip * _FLOAT_SLACK * 4
