"""Client-side FedHPro training losses: HPCL, HPAL and the client-specific margin.

Runs on the **client** during local training (loss = CE + HPCL + HPAL), on the device of
its inputs, batched over the samples and classes; all losses are differentiable w.r.t.
the features. Notation: a batch of B features f_i (B x dim) with labels y_i in [0, C);
``hp_means`` (C x dim) the unit class means of the hyper-prototypes from
:func:`normalized_hp_means`; ``n(x) = x / max(|x|_2, 1e-12)`` the L2 normalization.

Differences from the official code (DESIGN.md section 2): the margin is computed once per
round by the caller from the client's class-mean features (not over the whole dataset on
every batch), normalized and averaged over the K(K-1) off-diagonal pairs of the K classes
the client holds; HPCL is averaged over the batch once (not divided by B twice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from crypto.errors import ConfigError

__all__ = ["client_margin", "hpal_loss", "hpal_loss_masked", "hpcl_loss", "hpcl_loss_masked", "normalized_hp_means"]


def _check_batch(features: Tensor, labels: Tensor, hp_means: Tensor) -> None:
    """Shapes: features B x dim, labels (B,) integer, hp_means C x dim."""
    if features.dim() != 2 or hp_means.dim() != 2 or features.shape[1] != hp_means.shape[1]:
        raise ConfigError(
            f"features must be B x dim and hp_means C x dim with the same dim, got "
            f"{tuple(features.shape)} and {tuple(hp_means.shape)}"
        )
    if labels.shape != (features.shape[0],) or labels.is_floating_point():
        raise ConfigError(f"labels must be an integer tensor of shape ({features.shape[0]},)")


def normalized_hp_means(P: Tensor) -> Tensor:
    """Unit class means of the hyper-prototypes: ``mu_c = n(mean_l n(P[c, l]))``, C x dim.

    P is C x L x dim (from the server's broadcast). Differentiable; in local training it is
    a constant (computed once per round).
    """
    if P.dim() != 3:
        raise ConfigError(f"P must be C x L x dim, got {tuple(P.shape)}")
    return F.normalize(F.normalize(P, dim=-1).mean(dim=1), dim=-1)


@torch.no_grad()
def client_margin(class_mean_features: Tensor) -> float:
    """Client-specific margin: mean off-diagonal cosine between the client's class means.

    ``class_mean_features`` is K x dim, one row per class the client holds (the mean
    feature of its samples of that class under the current model). With u_k = n(row k):
    ``margin = (sum_{j != k} <u_j, u_k>) / (K (K - 1))``, a value in [-1/(K-1), 1]
    (dimensionless). K < 2 gives 0.0. Computed once per round by the client; the value
    never leaves the client.
    """
    if class_mean_features.dim() != 2:
        shape = tuple(class_mean_features.shape)
        raise ConfigError(f"class_mean_features must be K x dim, got {shape}")
    K = class_mean_features.shape[0]
    if K < 2:
        return 0.0
    U = F.normalize(class_mean_features.double(), dim=-1)
    gram = U @ U.T
    off_diagonal = gram.sum() - gram.diagonal().sum()
    return float(off_diagonal.item()) / (K * (K - 1))


def hpcl_loss(
    features: Tensor,
    labels: Tensor,
    hp_means: Tensor,
    tau: float = 0.05,
    margin: float = 0.0,
) -> Tensor:
    """Hyper-prototype contrastive loss (InfoNCE with the client margin), a 0-dim tensor.

    With s_ik = <n(f_i), n(hp_means[k])> / tau and m = max(margin, 0):
    ``HPCL = (1/B) sum_i -log( exp(s_{i,y_i}) / (sum_{k<C} exp(s_ik) + m) )``,
    computed as ``logaddexp(logsumexp_k s_ik, log m) - s_{i,y_i}`` (m = 0 drops the
    term). The margin is added to the denominator as in the official code; a negative
    margin (class means already pointing apart) is clamped to 0 because it could make the
    denominator non-positive. Averaged over the batch once. ``tau`` > 0 is the temperature
    (dimensionless, default 0.05). Client side.
    """
    _check_batch(features, labels, hp_means)
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"tau must be a positive finite number, got {tau}")
    if not math.isfinite(margin):
        raise ConfigError(f"margin must be finite, got {margin}")
    logits = F.normalize(features, dim=-1) @ F.normalize(hp_means, dim=-1).T / tau
    positive = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    log_denominator = torch.logsumexp(logits, dim=1)
    if margin > 0.0:
        log_denominator = torch.logaddexp(
            log_denominator, log_denominator.new_tensor(math.log(margin))
        )
    return (log_denominator - positive).mean()


def hpal_loss(features: Tensor, labels: Tensor, hp_means: Tensor) -> Tensor:
    """Hyper-prototype alignment (consistency) penalty, a 0-dim tensor.

    With d_i = n(f_i) - n(hp_means[y_i]) (dim-vectors) and the smooth-L1 (Huber, beta = 1)
    ``h(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5``:
    ``HPAL = (1/B) sum_i (1/dim) sum_j h(d_ij)``, i.e. ``F.smooth_l1_loss(...,
    reduction='mean')`` as in the official code (mean over the batch and the coordinates).
    ``hp_means`` is normalized again here, so unit means (``normalized_hp_means``) or raw
    class means of P both work. Client side.
    """
    _check_batch(features, labels, hp_means)
    target = F.normalize(hp_means, dim=-1)[labels]
    return F.smooth_l1_loss(F.normalize(features, dim=-1), target, reduction="mean", beta=1.0)


def _check_active(active: Tensor, hp_means: Tensor) -> Tensor:
    if active.shape != (hp_means.shape[0],):
        raise ConfigError(f"active must be a bool tensor of shape ({hp_means.shape[0]},), got {tuple(active.shape)}")
    return active.to(device=hp_means.device, dtype=torch.bool)


def hpcl_loss_masked(
    features: Tensor, labels: Tensor, hp_means: Tensor, active: Tensor, tau: float = 0.05, margin: float = 0.0
) -> Tensor:
    """:func:`hpcl_loss` over the classes whose hyper-prototypes were matched (``active``, C).

    Anchors of inactive classes leave the InfoNCE denominator and samples of inactive
    classes contribute 0 (the sum is still divided by the whole batch size B), so an
    unmatched anchor never pulls or pushes a feature. With every class active this equals
    :func:`hpcl_loss`; with none it is 0. Client side.
    """
    _check_batch(features, labels, hp_means)
    active = _check_active(active, hp_means)
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"tau must be a positive finite number, got {tau}")
    if not math.isfinite(margin):
        raise ConfigError(f"margin must be finite, got {margin}")
    if not bool(active.any()):
        return features.sum() * 0.0
    logits = F.normalize(features, dim=-1) @ F.normalize(hp_means, dim=-1).T / tau
    positive = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    log_denominator = torch.logsumexp(logits.masked_fill(~active, float("-inf")), dim=1)
    if margin > 0.0:
        log_denominator = torch.logaddexp(log_denominator, log_denominator.new_tensor(math.log(margin)))
    per_sample = log_denominator - positive
    return torch.where(active[labels], per_sample, torch.zeros_like(per_sample)).mean()


def hpal_loss_masked(features: Tensor, labels: Tensor, hp_means: Tensor, active: Tensor) -> Tensor:
    """:func:`hpal_loss` with samples of inactive classes (``active``, C) contributing 0
    (still averaged over the whole batch and the coordinates). Client side."""
    _check_batch(features, labels, hp_means)
    active = _check_active(active, hp_means)
    target = F.normalize(hp_means, dim=-1)[labels]
    per_entry = F.smooth_l1_loss(F.normalize(features, dim=-1), target, reduction="none", beta=1.0)
    return (per_entry * active[labels].to(per_entry.dtype)[:, None]).mean()
