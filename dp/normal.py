"""Gaussian noise from the keystream, the one sampler of float noise in ``dp/``.

Both float-noise users draw here: the per-class release (:class:`dp.mechanisms.
GaussianMechanism`) and DP-SGD's per-step noise (:class:`dp.dpsgd.KeystreamDPOptimizer`).
The keystream words and the Box-Muller transform are those of
``KeystreamRNG.standard_normal`` (53 random bits per uniform), so the two agree to the last
bits of the math library and consume the same stream; the arithmetic runs in torch's
vectorized float64 kernels, about twice as fast as numpy's here (``crypto/`` stays free of
torch, so this lives in ``dp/``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crypto.rng import KeystreamRNG
from dp.errors import ConfigError

_INV_2_53 = 1.0 / (1 << 53)


def _uniform_bits(rng: KeystreamRNG, n: int) -> torch.Tensor:
    """The top 53 bits of the next ``n`` keystream words, as float64 (exact: < 2^53).

    Converted by torch: numpy's uint64 -> float64 cast is not vectorized here and cost
    more than the AES keystream itself."""
    top = (rng.uint64(n) >> np.uint64(11)).view(np.int64)
    return torch.from_numpy(top).to(torch.float64)


def keystream_standard_normal(rng: KeystreamRNG, n: int) -> torch.Tensor:
    """``n`` standard normals (float64 tensor) from ``rng``: ``KeystreamRNG.standard_normal``.

    The same keystream words and the same Box-Muller transform (u1 in (0, 1) for the
    radius, u2 in [0, 1) for the angle, 53 random bits each, cosines then sines), so the
    values agree with ``rng.standard_normal(n)`` to the last bits of the math library and
    the stream ends at the same position.
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    m = (n + 1) // 2
    u = _uniform_bits(rng, 2 * m)
    u1 = (u[:m] + 0.5).mul_(_INV_2_53)
    theta = u[m:].mul(2.0 * math.pi * _INV_2_53)
    r = u1.log_().mul_(-2.0).sqrt_()
    out = torch.empty(2 * m, dtype=torch.float64)
    torch.mul(r, torch.cos(theta), out=out[:m])
    torch.mul(r, torch.sin(theta), out=out[m:])
    return out[:n]


def keystream_gaussian(n: int, std: float, rng: KeystreamRNG) -> torch.Tensor:
    """``n`` draws of N(0, std^2) (float64 tensor): :class:`dp.mechanisms.GaussianMechanism`.

    Seeded streams: one normal per coordinate. Hardened streams: the sum of four normals
    divided by two (Opacus's ``secure_mode`` construction, Holohan and Braghin 2021), the
    four being ``rng.standard_normal(4 n).reshape(4, n)``'s column: with Box-Muller pairs
    (r_k, theta_k), k < 2n, coordinate j gets r_j (cos + sin)(theta_j) + r_{n+j} (cos +
    sin)(theta_{n+j}), evaluated as sqrt(2) r sin(theta + pi/4) (one sine instead of a
    cosine and a sine; the same number up to rounding, tests compare the two).
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if not rng.hardened_mode:
        return keystream_standard_normal(rng, n).mul_(std)
    m = 2 * n  # Box-Muller pairs behind 4n normals: words [u1 (m) | u2 (m)]
    u = _uniform_bits(rng, 2 * m)
    r = (u[:m] + 0.5).mul_(_INV_2_53).log_().mul_(-2.0).sqrt_()
    r.mul_(torch.sin(u[m:].mul(2.0 * math.pi * _INV_2_53).add_(math.pi / 4)))
    return (r[:n] + r[n:]).mul_(math.sqrt(2.0) / 2.0 * std)
