"""The generic per-class release (secure_fed.privacy.release) and the prototype release.

* One sample's contribution to the prototype release (its feature clipped to --proto-clip
  plus the count coordinate) never exceeds the declared sensitivity, for random and
  adversarial inputs, in float32 and float64.
* Each algorithm's declaration drives RunPrivacy: FedHPro's release is what it was before
  the declarations existed; the prototype release is noised and charged at its own bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.clipping import feature_release_norm, per_class_feature_sums
from dp.errors import ConfigError as DpConfigError
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.config import ALGORITHMS, PER_CLASS_RELEASE, TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.privacy.noise import PrivacySettings, RunPrivacy
from secure_fed.privacy.release import RELEASE_RULES, declared_release, upload_spec
from secure_fed.privacy.upload import COUNT_SHARE, RESIDUAL_SENSITIVITY, prototype_sensitivity

C, DIM = 4, 6


# -- the bound of one sample -------------------------------------------------------------------
def _contribution(f: torch.Tensor, label: int, clip: float, count: float) -> float:
    s = per_class_feature_sums(f[None, :], torch.tensor([label]), C, clip, count)
    return float(torch.linalg.vector_norm(s.flat().double()))


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=DIM, max_size=DIM), st.integers(0, C - 1),
       st.floats(1e-3, 1e3), st.floats(0, 0.99), st.sampled_from([torch.float32, torch.float64]))
def test_one_samples_contribution_never_exceeds_the_bound(row: list[float], label: int, clip: float,
                                                          share: float, dtype: torch.dtype) -> None:
    sens = clip / math.sqrt(1 - share ** 2)
    count = share * sens
    assert feature_release_norm(clip, count) == pytest.approx(sens)
    f = torch.tensor(row, dtype=dtype)
    assert _contribution(f, label, clip, count) <= sens * (1 + 1e-12)
    # the feature part alone is within clip, and an unclipped feature is left (almost) as is
    s = per_class_feature_sums(f[None, :], torch.tensor([label]), C, clip, count)
    assert float(s.feature.double().norm()) <= clip
    norm = float(torch.linalg.vector_norm(f.double()))
    if norm < clip * 0.5:
        torch.testing.assert_close(s.feature[label], f, rtol=1e-6, atol=0)
    assert float(s.count[label]) == pytest.approx(count, rel=1e-6)  # the count coordinate is never scaled


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1e-30, 1.0, 3.0e38, -3.0e38, 1e6])
def test_adversarial_features_stay_within_the_bound(dtype: torch.dtype, value: float) -> None:
    clip = 0.7
    sens = prototype_sensitivity(clip)
    count = COUNT_SHARE * sens
    f = torch.full((3, DIM), value, dtype=dtype)
    f[1, 0] = -value
    y = torch.tensor([2, 2, 0])
    full = per_class_feature_sums(f, y, C, clip, count).flat().double()
    for i in range(3):
        keep = [j for j in range(3) if j != i]
        removed = per_class_feature_sums(f[keep], y[keep], C, clip, count).flat().double()
        assert float(torch.linalg.vector_norm(full - removed)) <= sens * (1 + 1e-6)


def test_bad_inputs_are_refused() -> None:
    f = torch.ones(2, DIM)
    with pytest.raises(DpConfigError, match="NaN"):
        per_class_feature_sums(torch.full((2, DIM), float("nan")), torch.tensor([0, 1]), C, 1.0)
    with pytest.raises(DpConfigError, match="labels"):
        per_class_feature_sums(f, torch.tensor([0, C]), C, 1.0)
    with pytest.raises(DpConfigError, match="clip"):
        per_class_feature_sums(f, torch.tensor([0, 1]), C, 0.0)
    with pytest.raises(DpConfigError, match="need f"):
        per_class_feature_sums(f, torch.tensor([0]), C, 1.0)


def test_batches_add_up_and_touch_only_their_classes() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, DIM, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, C - 1, (30,), generator=g)  # class C-1 absent
    whole = per_class_feature_sums(f, y, C, 1.5, 0.4)
    acc = per_class_feature_sums(f[:0], y[:0], C, 1.5, 0.4)
    for i in range(0, 30, 7):
        acc = per_class_feature_sums(f[i:i + 7], y[i:i + 7], C, 1.5, 0.4, into=acc)
    torch.testing.assert_close(acc.flat(), whole.flat())
    assert acc.clipped == whole.clipped
    assert float(whole.feature[C - 1].abs().sum()) == 0.0 and float(whole.count[C - 1]) == 0.0
    counts = torch.bincount(y, minlength=C).double()
    torch.testing.assert_close(whole.count, 0.4 * counts)


# -- the declarations --------------------------------------------------------------------------
def test_every_release_kind_has_a_rule_and_every_row_is_an_algorithm() -> None:
    assert set(PER_CLASS_RELEASE) <= set(ALGORITHMS)
    assert set(PER_CLASS_RELEASE.values()) <= set(RELEASE_RULES)
    assert declared_release(TrainConfig(algorithm="fedavg")) is None


def test_fedhpro_declaration_is_the_residual_release() -> None:
    decl = declared_release(TrainConfig(algorithm="fedhpro"))
    assert decl is not None
    assert decl.sensitivity == RESIDUAL_SENSITIVITY and decl.count_coordinate == COUNT_SHARE * RESIDUAL_SENSITIVITY
    assert "cls_grad_b" in decl.blocks and "class_count" in decl.blocks and decl.separate == ("cls_grad_w",)
    spec = upload_spec(TrainConfig(algorithm="fedhpro"), 100)
    assert spec.release_sensitivity == RESIDUAL_SENSITIVITY and spec.count_coordinate == decl.count_coordinate


@pytest.mark.parametrize("classifier", ["fedavg", "meta"])
def test_fedhpro_run_privacy_is_unchanged_by_the_declarations(classifier: str) -> None:
    """RunPrivacy.for_config builds, for FedHPro, the settings it built before the table."""
    blocks = [("cls_grad_b", (C, C), 10.0), ("class_count", (C,), 10.0), ("delta", (20,), 1.0)]
    if classifier == "meta":
        blocks.insert(0, ("cls_grad_w", (C, C, DIM), 10.0))
    layout = VectorLayout.build(blocks)
    cfg = TrainConfig(algorithm="fedhpro", classifier=classifier, noise_multiplier=1.3, target_epsilon=None,
                      mechanism="gaussian")
    new = RunPrivacy.for_config(cfg, layout, 3, [50, 60])
    old = PrivacySettings("sample", cfg.noise_placement, "gaussian", cfg.clip, 1.3, cfg.delta, cfg.release_rate,
                          cfg.accountant, secure=True, release_noise_ratio=cfg.release_ratio(),
                          release_sensitivity=RESIDUAL_SENSITIVITY, weight_release=classifier == "meta")
    assert new.has_release
    assert new.noise.releases == RunPrivacy(old, layout, 3, True).noise.releases
    labels = [r.label for r in new.noise.releases]
    assert labels == (["per_class_release", "weight_release"] if classifier == "meta" else ["per_class_release"])


@pytest.mark.parametrize("algorithm", ["protonorm", "fedsa"])
def test_prototype_release_is_noised_and_charged_at_its_bound(algorithm: str) -> None:
    clip = 2.5
    layout = VectorLayout.build([("proto_sum", (C, DIM), 100.0), ("class_count", (C,), 100.0), ("delta", (20,), 1.0)])
    cfg = TrainConfig(algorithm=algorithm, proto_clip=clip, noise_multiplier=1.1, target_epsilon=None,
                      mechanism="gaussian", release_noise_ratio=3.0)
    assert cfg.splits_budget
    priv = RunPrivacy.for_config(cfg, layout, 2, [40, 80])
    (rel,) = priv.noise.releases
    sens = prototype_sensitivity(clip)
    assert rel.label == "per_class_release" and rel.blocks == ("proto_sum", "class_count")
    assert rel.sensitivity == pytest.approx(clip / math.sqrt(1 - COUNT_SHARE ** 2)) == pytest.approx(sens)
    assert priv.noise.share_std() == pytest.approx(3.3 * sens / math.sqrt(2))  # distributed share of t = 2
    doc = {b["name"]: b for b in priv.noise.layout_doc()}
    assert doc["proto_sum"]["sensitivity"] == pytest.approx(sens) and "release" not in doc["delta"]
    events = priv.round_events(0, 1, 1, None, None)
    assert len(events) == 1 and events[0].label == "per_class_release"
    assert events[0].noise_multiplier == pytest.approx(3.3 / math.sqrt(2))  # type: ignore[attr-defined]
    assert events[0].sample_rate == cfg.release_rate  # type: ignore[attr-defined]
    spec = upload_spec(cfg, 120)
    assert spec.release_sensitivity == pytest.approx(sens) and spec.count_coordinate == pytest.approx(COUNT_SHARE * sens)
    assert spec.prototype_bound() == clip * 120 and spec.count_bound() == pytest.approx(COUNT_SHARE * sens * 120)


def test_client_unit_clips_the_whole_upload_whatever_its_blocks() -> None:
    layout = VectorLayout.build([("proto_sum", (C, DIM), 1.0), ("class_count", (C,), 1.0), ("delta", (20,), 1.0)])
    cfg = TrainConfig(algorithm="protonorm", dp="client", noise_multiplier=1.0, target_epsilon=None, mechanism="gaussian",
                      noise_placement="local")
    priv = RunPrivacy.for_config(cfg, layout, 1, [40])
    (rel,) = priv.noise.releases
    assert rel.label == "client_update" and set(rel.blocks) == set(layout.names()) and rel.sensitivity == cfg.clip
    from crypto.rng import KeystreamRNG
    big = np.full(layout.size, 50.0)
    settings_no_noise = PrivacySettings("client", "local", "discrete", cfg.clip, 1.0, cfg.delta, 1.0)
    out = RunPrivacy(settings_no_noise, layout, 1, True).noise.finish_float(big, KeystreamRNG.from_seed(0, "t"))
    assert float(np.linalg.norm(out)) <= cfg.clip  # clipped, and (discrete mechanism) not noised in floats


def test_proto_clip_and_ratio_are_validated() -> None:
    with pytest.raises(ConfigError, match="--proto-clip"):
        TrainConfig(algorithm="protonorm", proto_clip=0.0)
    with pytest.raises(ConfigError, match="--proto-clip"):
        TrainConfig(algorithm="fedsa", proto_clip=float("inf"))
    with pytest.raises(ConfigError, match="--release-noise-ratio"):
        TrainConfig(algorithm="fedavg", release_noise_ratio=2.0)
    assert TrainConfig(algorithm="protonorm", release_noise_ratio=2.0).release_ratio() == 2.0
    with pytest.raises(ConfigError, match="fedproto runs without DP"):
        TrainConfig(algorithm="fedproto")
