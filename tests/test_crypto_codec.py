"""Fixed-point codec: sums decode within the stated bound, overflow is refused up front."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.codec import FixedPointCodec, can_overflow
from crypto.errors import ConfigError, EncodingOverflow
from crypto.prg import add_mod
from crypto.rng import KeystreamRNG


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([16, 24, 32, 40, 53, 64]),
    log_gamma=st.integers(0, 12),
    clip=st.floats(0.1, 100.0),
    n=st.integers(1, 8),
    length=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
def test_decoded_sum_is_within_error_bound(
    bits: int, log_gamma: int, clip: float, n: int, length: int, seed: int
) -> None:
    codec = FixedPointCodec(bits, float(2**log_gamma), clip)
    if can_overflow(n, clip, codec.gamma, bits):
        with pytest.raises(EncodingOverflow):
            codec.check_cohort(n)
        return
    rng = KeystreamRNG.from_seed(seed, "codec")
    xs = [rng.standard_normal(length) * clip * 1.5 for _ in range(n)]  # some entries clip
    total = np.zeros(length, dtype=codec.dtype)
    for x in xs:
        enc = codec.encode(x, rng)
        assert enc.dtype == codec.dtype and enc.shape == x.shape
        add_mod(total, enc, out=total)
    decoded = codec.decode_sum(total, n)
    expected = sum(np.clip(x, -clip, clip) for x in xs)
    assert np.all(np.abs(decoded - expected) <= codec.error_bound(n))


def test_negative_values_use_twos_complement() -> None:
    codec = FixedPointCodec(16, 4.0, 10.0)
    enc = codec.encode(np.array([-1.0, 1.0, -10.0, 20.0]), KeystreamRNG.from_seed(0))
    assert enc.tolist() == [2**16 - 4, 4, 2**16 - 40, 40]
    assert codec.decode_sum(enc, 1).tolist() == [-1.0, 1.0, -10.0, 10.0]


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPointCodec(32, 1.0, 10.0)
    rng = KeystreamRNG.from_seed(3)
    x = np.full(200_000, 0.3)
    mean = codec.decode_sum(codec.encode(x, rng), 1).mean()
    assert abs(mean - 0.3) < 0.005  # std of the mean ~ 0.001
    assert set(np.unique(codec.decode_sum(codec.encode(x[:1000], rng), 1))) == {0.0, 1.0}


def test_high_bit_widths_decode_large_sums() -> None:
    codec = FixedPointCodec(64, 2.0**40, 1000.0)
    rng = KeystreamRNG.from_seed(5)
    x = np.array([999.5, -999.5, 0.25])
    total = codec.encode(x, rng) + codec.encode(x, rng)
    assert np.allclose(codec.decode_sum(total, 2), 2 * x, atol=codec.error_bound(2))


def test_overflow_detection_boundary() -> None:
    # n * ceil(clip * gamma) must stay below 2^(bits - 1)
    assert not can_overflow(127, 1.0, 1.0, 8)
    assert can_overflow(128, 1.0, 1.0, 8)
    codec = FixedPointCodec(8, 1.0, 1.0)
    codec.check_cohort(127)
    assert codec.max_abs_sum(127) == 127
    with pytest.raises(EncodingOverflow, match="bits"):
        codec.check_cohort(128)
    with pytest.raises(EncodingOverflow):
        codec.decode_sum(np.zeros(3, dtype=np.uint32), 128)


def test_overflow_advice_is_actionable() -> None:
    codec = FixedPointCodec(32, 2.0**20, 4.0)
    with pytest.raises(EncodingOverflow) as err:
        codec.check_cohort(1000)
    msg = str(err.value)
    assert "raise bits to >= 33" in msg and "gamma to <= 536870.75" in msg
    assert "cohort to <= 511" in msg
    # following any one piece of advice works, and the advice is tight
    FixedPointCodec(33, 2.0**20, 4.0).check_cohort(1000)
    FixedPointCodec(32, 536870.75, 4.0).check_cohort(1000)
    codec.check_cohort(511)
    assert can_overflow(512, 4.0, 2.0**20, 32)


def test_wrapped_sum_would_decode_wrongly() -> None:
    """Why the check exists: past the bound, the decoded sum flips sign."""
    codec = FixedPointCodec(8, 1.0, 1.0)
    enc = codec.encode(np.ones(1), KeystreamRNG.from_seed(0))
    total = enc * np.uint32(128)
    assert FixedPointCodec(9, 1.0, 1.0).decode_sum(total, 128).tolist() == [128.0]
    assert (np.asarray(total) & np.uint32(0xFF)).tolist() == [128]  # = -128 in 8 bits


@pytest.mark.parametrize(
    "bits, gamma, clip",
    [(1, 1.0, 1.0), (65, 1.0, 1.0), (16, 0.0, 1.0), (16, 1.0, -1.0), (16, float("nan"), 1.0)],
)
def test_invalid_codec_rejected(bits: int, gamma: float, clip: float) -> None:
    with pytest.raises(ConfigError):
        FixedPointCodec(bits, gamma, clip)


def test_nan_input_rejected_and_inf_clipped() -> None:
    codec = FixedPointCodec(16, 1.0, 2.0)
    rng = KeystreamRNG.from_seed(0)
    with pytest.raises(ConfigError):
        codec.encode(np.array([np.nan]), rng)
    assert codec.decode_sum(codec.encode(np.array([np.inf, -np.inf]), rng), 1).tolist() == [
        2.0,
        -2.0,
    ]
