"""Tests for the client-side FedHPro losses (secure_fed.fl.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import ConfigError
from secure_fed.fl.losses import client_margin, hpal_loss, hpcl_loss, normalized_hp_means


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _loop_hpcl(
    features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, tau: float, margin: float
) -> float:
    """Per-sample loop of -log(exp(s_y) / (sum_k exp(s_k) + max(margin, 0))), in floats."""
    total = 0.0
    mus = [_unit(m.tolist()) for m in means]
    for f, y in zip(features, labels, strict=True):
        u = _unit(f.tolist())
        s = [sum(a * b for a, b in zip(u, mu, strict=True)) / tau for mu in mus]
        den = sum(math.exp(v) for v in s) + max(margin, 0.0)
        total += -math.log(math.exp(s[int(y)]) / den)
    return total / len(labels)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


# ------------------------------------------------------------------ hp means


def test_normalized_hp_means_hand_values() -> None:
    P = torch.tensor([[[2.0, 0.0], [0.0, 5.0]], [[3.0, 4.0], [6.0, 8.0]]])
    # class 0: rows -> (1,0), (0,1); mean (0.5,0.5) -> (1/sqrt2, 1/sqrt2); class 1: (0.6, 0.8)
    r = 1.0 / math.sqrt(2.0)
    torch.testing.assert_close(normalized_hp_means(P), torch.tensor([[r, r], [0.6, 0.8]]))
    with pytest.raises(ConfigError):
        normalized_hp_means(P[0])


# --------------------------------------------------------------------- margin


def test_client_margin_toy() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # unit rows (1,0), (0,1), (r,r): off-diagonal cosines 0, r, r (each twice) over 6 pairs
    assert client_margin(means) == pytest.approx(math.sqrt(2.0) / 3.0, abs=1e-12)
    assert client_margin(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    assert client_margin(torch.tensor([[1.0, 2.0]])) == 0.0
    assert client_margin(torch.zeros(0, 4)) == 0.0
    assert isinstance(client_margin(means), float)


def test_client_margin_equals_pairwise_loop() -> None:
    X = torch.randn(7, 5, generator=_gen(2), dtype=torch.float64)
    pairs = [
        F.cosine_similarity(X[j], X[k], dim=0).item()
        for j in range(7) for k in range(7) if j != k
    ]
    assert client_margin(X) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


# ----------------------------------------------------------------------- HPCL


def test_hpcl_hand_value() -> None:
    features = torch.tensor([[5.0, 0.0]])
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # s = (1/0.5, 0/0.5) = (2, 0); loss = log(e^2 + e^0 + 0.25) - 2 = log(1 + 1.25 e^-2)
    got = hpcl_loss(features, torch.tensor([0]), means, tau=0.5, margin=0.25)
    assert got.item() == pytest.approx(math.log(1.0 + 1.25 * math.exp(-2.0)), abs=1e-6)
    plain = hpcl_loss(features, torch.tensor([1]), means, tau=0.5)
    assert plain.item() == pytest.approx(math.log(math.exp(2.0) + 1.0), abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    margin=st.floats(min_value=-0.5, max_value=3.0),
    tau=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
)
def test_hpcl_equals_per_sample_loop(seed: int, margin: float, tau: float) -> None:
    g = _gen(seed)
    B, C, dim = 6, 4, 5
    features = torch.randn(B, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    means = torch.randn(C, dim, generator=g, dtype=torch.float64)
    got = hpcl_loss(features, labels, means, tau=tau, margin=margin).item()
    assert got == pytest.approx(_loop_hpcl(features, labels, means, tau, margin), rel=1e-9)


def test_hpcl_without_margin_is_cross_entropy_of_scaled_cosines() -> None:
    g = _gen(3)
    features = torch.randn(16, 8, generator=g)
    labels = torch.randint(0, 5, (16,), generator=g)
    means = normalized_hp_means(torch.randn(5, 3, 8, generator=g))
    logits = F.normalize(features, dim=1) @ means.T / 0.05
    want = F.cross_entropy(logits, labels)
    torch.testing.assert_close(hpcl_loss(features, labels, means), want)
    # negative margins are clamped to zero
    torch.testing.assert_close(hpcl_loss(features, labels, means, margin=-0.3), want)
    # a positive margin strictly increases the loss
    assert hpcl_loss(features, labels, means, margin=0.5) > want


def test_hpcl_is_averaged_over_the_batch_once() -> None:
    g = _gen(4)
    features = torch.randn(4, 6, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    means = torch.randn(3, 6, generator=g)
    one = hpcl_loss(features, labels, means, margin=0.2)
    doubled = hpcl_loss(features.repeat(2, 1), labels.repeat(2), means, margin=0.2)
    torch.testing.assert_close(one, doubled)  # a 1/B^2 loss would halve here


def test_hpcl_gradient_flows_to_features_only_through_direction() -> None:
    features = torch.randn(5, 4, generator=_gen(5), requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    means = torch.randn(3, 4, generator=_gen(6))
    hpcl_loss(features, labels, means, margin=0.1).backward()
    grad = features.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    radial = (grad * features.detach()).sum(dim=1)  # scale-free loss: no radial gradient
    torch.testing.assert_close(radial, torch.zeros(5), rtol=0, atol=1e-5)


def test_hpcl_rejects_bad_arguments() -> None:
    f, y, m = torch.randn(3, 4), torch.tensor([0, 1, 0]), torch.randn(2, 4)
    with pytest.raises(ConfigError):
        hpcl_loss(f, y, m, tau=0.0)
    with pytest.raises(ConfigError):
        hpcl_loss(f, y, m, margin=float("nan"))
    with pytest.raises(ConfigError):
        hpcl_loss(f, y.float(), m)
    with pytest.raises(ConfigError):
        hpcl_loss(f, y, torch.randn(2, 5))


# ----------------------------------------------------------------------- HPAL


def test_hpal_hand_values_both_huber_branches() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # (3,4) -> (0.6, 0.8) vs (1, 0): d = (-0.4, 0.8): (0.08 + 0.32) / 2 = 0.2
    near = hpal_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([0]), means)
    assert near.item() == pytest.approx(0.2, abs=1e-6)
    # (0,-1) vs (0, 1): d = (0, -2): (0 + (2 - 0.5)) / 2 = 0.75
    far = hpal_loss(torch.tensor([[0.0, -1.0]]), torch.tensor([1]), means)
    assert far.item() == pytest.approx(0.75, abs=1e-6)
    both = hpal_loss(torch.tensor([[3.0, 4.0], [0.0, -1.0]]), torch.tensor([0, 1]), means)
    assert both.item() == pytest.approx((0.2 + 0.75) / 2, abs=1e-6)


def test_hpal_equals_per_sample_loop() -> None:
    g = _gen(7)
    features = torch.randn(9, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (9,), generator=g)
    means = torch.randn(4, 6, generator=g, dtype=torch.float64)
    want = 0.0
    for f, y in zip(features, labels, strict=True):
        d = [a - b for a, b in zip(_unit(f.tolist()), _unit(means[int(y)].tolist()), strict=True)]
        want += sum(_huber(x) for x in d) / len(d)
    want /= len(labels)
    assert hpal_loss(features, labels, means).item() == pytest.approx(want, rel=1e-9)
