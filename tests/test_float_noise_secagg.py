"""Float Gaussian noise under SecAgg is charged as one client's noise (issue 15, Privacy).

The float mechanism adds its noise before the codec encodes each client's upload, and the
codec clamps every coordinate to its block's bound (under ``--dp client`` the bound equals
the clip norm, so a clipped coordinate at the bound is clamped as soon as noise pushes it
out). The sum the server decodes is then not the Gaussian sum, and crediting the noise of
all summed clients overstates the privacy. Each client's noised upload alone is a Gaussian
mechanism and everything after it (clamp, rounding, ring sum) is post-processing, so the
ledger credits one share. Integer noise in the ring is added after every clamp and keeps
the sum's credit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto.rng import KeystreamRNG
from dp.events import DiscreteGaussianEvent, GaussianEvent
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.privacy.noise import PrivacySettings, RunPrivacy, SgdPlan

LAYOUT = VectorLayout.build([("delta", (64,), 1.0)])
SUMMED = 8


def _privacy(mechanism: str, placement: str = "local", threshold: int = 5) -> RunPrivacy:
    settings = PrivacySettings("client", placement, mechanism, 1.0, 1.1, 1e-5, 1.0, secure=True)
    return RunPrivacy(settings, LAYOUT, threshold, has_release=False)


def test_the_codec_clamps_a_noised_float_upload() -> None:
    """Why one share: a clipped coordinate at the bound plus float noise leaves the codec's
    range, and the codec clamps it (the clamp acts on the noised value)."""
    priv = _privacy("gaussian")
    rng = KeystreamRNG.from_seed(3, "test")
    upload = np.zeros(LAYOUT.size)
    upload[0] = 1.0  # the whole clip norm in one coordinate, = the codec's bound
    noised = priv.noise.finish_float(upload, rng)
    codec = LayoutCodec.for_cohort(LAYOUT, 32, SUMMED, priv.noise.total_noise_std(SUMMED))
    decoded = codec.decode_sum(codec.encode(noised, rng), 1)
    beyond = np.abs(noised) > 1.0 + 1.0 / codec.gamma("delta")
    assert beyond.any()  # noise std 1.1 at bound 1: many coordinates leave the range
    assert np.all(np.abs(decoded[beyond]) <= 1.0 + 1.0 / codec.gamma("delta"))


@pytest.mark.parametrize("placement", ["local", "distributed"])
def test_float_noise_under_secagg_is_charged_as_one_share(placement: str) -> None:
    priv = _privacy("gaussian", placement)
    (event,) = priv.charged_events(1, list(range(SUMMED)), None, {})[:1]
    assert isinstance(event, GaussianEvent)
    # one client's share: std share_std over sensitivity clip, never sqrt(SUMMED) of them
    assert event.noise_multiplier == pytest.approx(priv.noise.share_std() / 1.0, rel=1e-12)
    assert priv.shares_for(SUMMED) == 1
    planned = priv.round_events(0, 1, priv.planned_shares(), None, None)[0]  # what planning assumes
    assert isinstance(planned, GaussianEvent)
    assert planned.noise_multiplier == pytest.approx(event.noise_multiplier, rel=1e-12)


def test_integer_noise_in_the_ring_keeps_the_sums_credit() -> None:
    priv = _privacy("discrete", "distributed")
    codec = LayoutCodec.for_cohort(LAYOUT, 32, SUMMED, priv.noise.total_noise_std(SUMMED))
    events = priv.charged_events(1, list(range(SUMMED)), codec.gamma("delta"), {0: SgdPlan(0.5, 2)})
    assert len(events) == SUMMED
    assert all(isinstance(e, DiscreteGaussianEvent) and e.shares == SUMMED for e in events)
    assert events[0].sigma == pytest.approx(priv.noise.integer_sigma(codec), rel=1e-12)  # type: ignore[union-attr]
    assert priv.noise.integer_sigma(codec) * math.sqrt(5) == pytest.approx(
        1.1 * codec.gamma("delta"), rel=1e-9)  # distributed: t = 5 shares carry sigma * C
