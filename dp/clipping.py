"""Per-sample clipping of per-class gradient releases, in closed form (client side).

For a linear head logits = W f + b with cross-entropy, sample i's gradient is determined
by g_i = softmax(logits_i) - onehot(y_i) (C entries):

    dL/df_i = W^T g_i (dim),  dL/dW_i = g_i f_i^T (C x dim),  dL/db_i = g_i (C)

and ||g_i f_i^T||_F = |g_i| |f_i|, so the joint L2 norm of the concatenation (plus an
optional constant count coordinate c) is sqrt(|W^T g_i|^2 + |g_i|^2 |f_i|^2 + |g_i|^2 + c^2)
without forming any per-sample weight gradient. Each contribution is scaled by Opacus's
flat-clipping factor min(1, clip / (norm + 1e-6)) and summed into class y_i's block.
The class-c weight block sum_i s_i g_i f_i^T is one matrix product per class present in the
batch, done as one batched product over those classes (padded to the largest class count),
or as one dense product against one-hot rows when it is small; blocks of absent classes are
never touched, so a class-c batch costs what plain autograd's weight gradient costs.

Under add/remove-one-sample adjacency the concatenated sums change by one clipped
contribution, so their L2 sensitivity is ``clip`` (the count coordinate included).
Norms are in the units of the loss gradient (per sample, not averaged).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from dp.errors import ConfigError

OPACUS_EPS = 1e-6  # Opacus flat clipping: factor = min(1, C / (norm + 1e-6))
SHRINK_FLOAT64 = 1e-12  # per_class_feature_sums: relative margin for float64 rounding of the norm
_ONEHOT_FLOPS = 2.0e7  # below this k*C*B*dim, a dense one-hot product is cheaper
_MEMBERS_FLOPS = 1.0e6  # below this C*B*dim, class sums by one-hot products beat index_add


@dataclass(frozen=True, slots=True)
class PerClassSums:
    """Clipped per-class sums of one client's batch (float, same dtype as the features).

    feature (C x dim), weight (C x C x dim: class block, then dL/dW), bias (C x C),
    count (C: the clipped count coordinate), clipped: samples whose factor was < 1.
    """

    feature: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    count: torch.Tensor
    clipped: int

    def flat(self) -> torch.Tensor:
        """All blocks as one vector, layout feature | weight | bias | count."""
        return torch.cat(
            [self.feature.reshape(-1), self.weight.reshape(-1), self.bias.reshape(-1),
             self.count.reshape(-1)]
        )



def check_clip(clip: float) -> None:
    """The dp/ boundary's one check of a clip norm (the CLI's is in ``TrainConfig``)."""
    if not (clip > 0 and math.isfinite(clip)):
        raise ConfigError(f"clip norm must be > 0 and finite, got {clip}")

def _check(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
           clip: float) -> None:
    if f.dim() != 2 or w.dim() != 2 or b.dim() != 1 or y.dim() != 1:
        raise ConfigError("need f (B x dim), y (B), W (C x dim), b (C)")
    if f.shape[1] != w.shape[1] or w.shape[0] != b.shape[0] or f.shape[0] != y.shape[0]:
        raise ConfigError(f"shape mismatch: f {tuple(f.shape)}, y {tuple(y.shape)}, "
                          f"W {tuple(w.shape)}, b {tuple(b.shape)}")
    check_clip(clip)


def _class_blocks(gs: torch.Tensor, f: torch.Tensor, slot: torch.Tensor, counts: torch.Tensor
                  ) -> torch.Tensor:
    """sum_{i: slot_i = j} gs_i f_i^T for j < k = len(counts), as a new (k x C x dim)."""
    bsz, dim = f.shape
    n_cls, k = gs.shape[1], int(counts.numel())
    out = f.new_empty(k, n_cls, dim)
    if k == 1:
        return torch.mm(gs.T, f, out=out[0]).unsqueeze(0)
    if k * n_cls * bsz * dim <= _ONEHOT_FLOPS:
        onehot = torch.nn.functional.one_hot(slot, k).to(gs.dtype)
        rows = (onehot[:, :, None] * gs[:, None, :]).reshape(bsz, k * n_cls)
        torch.mm(rows.T, f, out=out.view(k * n_cls, dim))
        return out
    # one batched product over the k slots, each padded to the largest
    order = torch.argsort(slot, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ks = slot[order]
    pos = torch.arange(bsz, device=f.device) - starts[ks]
    m = int(counts.max())
    gp = gs.new_zeros(k, m, n_cls)
    fp = f.new_zeros(k, m, dim)
    gp[ks, pos] = gs[order]
    fp[ks, pos] = f[order]
    return torch.bmm(gp.transpose(1, 2), fp, out=out)


def zero_sums(n_cls: int, dim: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> PerClassSums:
    """An all-zero release of C classes (the client's buffer, zeroed once per round)."""
    z = functools.partial(torch.zeros, dtype=dtype, device=device)
    return PerClassSums(z(n_cls, dim), z(n_cls, n_cls, dim), z(n_cls, n_cls), z(n_cls), 0)


@torch.no_grad()
def per_class_clipped_sums(
    f: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    clip: float,
    count_coordinate: float | None = None,
    into: PerClassSums | None = None,
) -> PerClassSums:
    """Clipped per-sample CE gradients of a linear head, summed per class (client side).

    f: features (B x dim) of the frozen extractor; y: labels (B, int64); w, b: the global
    classifier (C x dim, C); clip: L2 norm per sample; count_coordinate: constant extra
    coordinate clipped jointly with the gradient (the noisy count rides in the release).

    into: a release of the same shapes (e.g. from :func:`zero_sums`) to which this batch's
    sums are *added* in place and which is returned, with ``clipped`` increased. Every
    sample is clipped on its own, so adding class batches one by one gives the same release
    as one call on their union, and only the blocks of classes in ``y`` are written: a
    class-c batch costs one C x B x dim product, not a pass over the C x C x dim release.
    """
    _check(f, y, w, b, clip)
    n_cls, dim = w.shape
    if into is not None and (into.weight.shape != (n_cls, n_cls, dim)
                             or into.feature.shape != (n_cls, dim)):
        raise ConfigError(f"into has shapes for C={into.feature.shape[0]}, "
                          f"dim={into.feature.shape[1]}; these inputs have C={n_cls}, dim={dim}")
    y = y.to(torch.long)
    g = torch.softmax(f @ w.T + b, dim=1)
    g[torch.arange(f.shape[0], device=f.device), y] -= 1.0
    gf = g @ w

    def sqnorm(x: torch.Tensor) -> torch.Tensor:  # row-wise squared L2 norms, one kernel
        return torch.linalg.vector_norm(x, dim=1).square()

    g2 = sqnorm(g)
    sq = sqnorm(gf) + g2 * (sqnorm(f) + 1.0)
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    factor = torch.clamp(clip / (torch.sqrt(sq + c * c) + OPACUS_EPS), max=1.0)
    gs = g * factor[:, None]
    counts = torch.bincount(y, minlength=n_cls)
    present = torch.nonzero(counts).squeeze(1)
    k = int(present.numel())
    if into is not None and k == 1:  # a class batch: factor-weighted column sums, one product each
        c0 = int(present[0])
        into.feature[c0].addmv_(gf.T, factor)
        into.bias[c0].addmv_(g.T, factor)
        if count_coordinate is not None:
            into.count[c0] += c * factor.sum()
        into.weight[c0].addmm_(gs.T, f)
        return dataclasses.replace(into, clipped=into.clipped + int((factor < 1.0).sum()))
    members = (torch.nn.functional.one_hot(y, n_cls).to(f.dtype).T
               if n_cls * f.shape[0] * dim <= _MEMBERS_FLOPS else None)
    rows = [gf * factor[:, None], gs] + ([] if count_coordinate is None else [factor * c])
    if into is None:
        def class_sum(x: torch.Tensor) -> torch.Tensor:
            if members is not None:  # small: one product with the class memberships
                return members @ x
            return x.new_zeros((n_cls, *x.shape[1:])).index_add_(0, y, x)

        feature, bias, *count = (class_sum(x) for x in rows)
        if 2 * k >= n_cls:  # most classes present: every block straight into new memory
            weight = _class_blocks(gs, f, y, counts)
        else:
            weight = f.new_zeros(n_cls, n_cls, dim)
            _add_present(weight, gs, f, y, counts, present)
        return PerClassSums(feature, weight, bias, count[0] if count else f.new_zeros(n_cls),
                            int((factor < 1.0).sum()))
    for acc, x in zip((into.feature, into.bias, into.count), rows, strict=False):
        if members is not None:
            acc.add_(members @ x)
        else:
            acc.index_add_(0, y, x)
    _add_present(into.weight, gs, f, y, counts, present)
    return dataclasses.replace(into, clipped=into.clipped + int((factor < 1.0).sum()))


def _add_present(weight: torch.Tensor, gs: torch.Tensor, f: torch.Tensor, y: torch.Tensor,
                 counts: torch.Tensor, present: torch.Tensor) -> None:
    """weight[c] += sum_{i: y_i = c} gs_i f_i^T for the classes present; no other block."""
    if present.numel() == 1:
        weight[int(present[0])].addmm_(gs.T, f)
    elif present.numel() > 1:
        slot = (torch.cumsum(counts > 0, 0) - 1)[y]
        weight.index_add_(0, present, _class_blocks(gs, f, slot, counts[present]))


def clip_vector(v: np.ndarray | torch.Tensor, clip: float
                ) -> tuple[np.ndarray | torch.Tensor, bool]:
    """Client unit (DP-FedAvg): scale the whole upload vector to L2 norm <= ``clip``.

    Uses the same factor as Opacus, min(1, clip / (norm + 1e-6)); returns the clipped
    vector (a new array/tensor of the same kind) and whether it was scaled down.
    """
    check_clip(clip)
    if isinstance(v, torch.Tensor):
        norm = float(torch.linalg.vector_norm(v.detach().double()))
    else:
        v = np.asarray(v, dtype=np.float64)
        norm = float(np.linalg.norm(v))
    factor = min(1.0, clip / (norm + OPACUS_EPS))
    return v * factor, factor < 1.0


# -- the residual release: what hyper-prototype matching reads ---------------------------------
RESIDUAL_NORM_BOUND = math.sqrt(2.0)
"""L2 bound of one sample's softmax residual r = softmax(z) - onehot(y), for any logits z.

With p = softmax(z): |r|^2 = (1 - p_y)^2 + sum_{k != y} p_k^2 <= (1 - p_y)^2 + (sum_{k != y} p_k)^2
= 2 (1 - p_y)^2 <= 2. The bound is approached (never reached) when p puts all its mass on one
wrong class. It holds before any clipping, whatever the model."""


@dataclass(frozen=True, slots=True)
class ResidualSums:
    """Per-class sums of (clipped) softmax residuals of one client's batch.

    residual (C x C): row c is sum over class-c samples of s_i (p_i - e_c), the summed
    cross-entropy gradient w.r.t. the logits (the bias gradient of a linear head);
    count (C): the summed count coordinate s_i * c; clipped: samples whose factor s_i was < 1.
    """

    residual: torch.Tensor
    count: torch.Tensor
    clipped: int

    def flat(self) -> torch.Tensor:
        """Both blocks as one vector, layout residual | count."""
        return torch.cat([self.residual.reshape(-1), self.count.reshape(-1)])


def residual_release_norm(count_coordinate: float | None) -> float:
    """L2 norm bound of one sample's contribution to :func:`per_class_residual_sums` before
    clipping: sqrt(2 + c^2) (:data:`RESIDUAL_NORM_BOUND` and the count coordinate c)."""
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    return math.sqrt(RESIDUAL_NORM_BOUND ** 2 + c * c)


@torch.no_grad()
def per_class_residual_sums(
    logits: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    count_coordinate: float | None = None,
    into: ResidualSums | None = None,
) -> ResidualSums:
    """Per-class sums of the softmax residuals p_i - e_{y_i}, clipped per sample (client side).

    logits: (B x C) of any model; y: labels (B, int64); clip: L2 norm per sample of the
    residual and the count coordinate together. Each sample's residual has norm <=
    :data:`RESIDUAL_NORM_BOUND`, so with ``clip >= residual_release_norm(count_coordinate)``
    clipping never bites (the factor, Opacus's min(1, clip / (norm + 1e-6)), is >= 1 - 1e-6 /
    clip), and the sums' add/remove-one-sample L2 sensitivity is ``clip`` either way.

    For a linear head logits = W f + b, sample i's feature gradient is W^T r_i, so
    ``residual @ W`` is the per-class feature-gradient sum (C x dim) without uploading it.

    into: a release of the same shapes to which this batch's sums are added in place; only
    the rows of classes in ``y`` are written.
    """
    if logits.dim() != 2 or y.dim() != 1 or logits.shape[0] != y.shape[0]:
        raise ConfigError(f"need logits (B x C) and y (B), got {tuple(logits.shape)} and {tuple(y.shape)}")
    check_clip(clip)
    n_cls = logits.shape[1]
    if into is not None and into.residual.shape != (n_cls, n_cls):
        raise ConfigError(f"into has shapes for C={into.residual.shape[0]}; these logits have C={n_cls}")
    y = y.to(torch.long)
    g = torch.softmax(logits, dim=1)
    g[torch.arange(g.shape[0], device=g.device), y] -= 1.0
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    norm = torch.sqrt(torch.linalg.vector_norm(g, dim=1).square() + c * c)
    factor = torch.clamp(clip / (norm + OPACUS_EPS), max=1.0)
    if into is None:
        into = ResidualSums(g.new_zeros(n_cls, n_cls), g.new_zeros(n_cls), 0)
    into.residual.index_add_(0, y, g * factor[:, None])
    if count_coordinate is not None:
        into.count.index_add_(0, y, factor * c)
    return dataclasses.replace(into, clipped=into.clipped + int((factor < 1.0).sum()))


@torch.no_grad()
def per_class_weight_sums(
    logits: torch.Tensor, f: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[torch.Tensor, int]:
    """Per-class sums of clipped per-sample weight gradients of a linear head (client side).

    Sample i's weight gradient is r_i f_i^T (r_i = p_i - e_{y_i}, C x dim) with Frobenius
    norm |r_i| |f_i|; it is scaled by min(1, clip / (norm + 1e-6)) and summed into class
    y_i's block. Returns (C x C x dim, samples scaled down); blocks of classes absent from
    ``y`` are never written. L2 sensitivity under add/remove-one-sample: ``clip``.
    """
    if logits.dim() != 2 or f.dim() != 2 or y.dim() != 1 or not logits.shape[0] == f.shape[0] == y.shape[0]:
        raise ConfigError(f"need logits (B x C), f (B x dim), y (B), got {tuple(logits.shape)}, "
                          f"{tuple(f.shape)}, {tuple(y.shape)}")
    check_clip(clip)
    n_cls, dim = logits.shape[1], f.shape[1]
    y = y.to(torch.long)
    g = torch.softmax(logits, dim=1)
    g[torch.arange(g.shape[0], device=g.device), y] -= 1.0
    norm = torch.linalg.vector_norm(g, dim=1) * torch.linalg.vector_norm(f, dim=1)
    factor = torch.clamp(clip / (norm + OPACUS_EPS), max=1.0)
    gs = g * factor[:, None]
    counts = torch.bincount(y, minlength=n_cls)
    present = torch.nonzero(counts).squeeze(1)
    weight = f.new_zeros(n_cls, n_cls, dim)
    _add_present(weight, gs, f, y, counts, present)
    return weight, int((factor < 1.0).sum())


# -- the prototype release: per-class sums of clipped features ---------------------------------
@dataclass(frozen=True, slots=True)
class FeatureSums:
    """Per-class sums of per-sample clipped features of one client's batch (client side).

    feature (C x dim): row c is sum over class-c samples of s_i f_i, s_i = min(1, clip /
    (|f_i| + 1e-6)); count (C): the summed constant count coordinate; clipped: samples whose
    factor s_i was < 1.
    """

    feature: torch.Tensor
    count: torch.Tensor
    clipped: int

    def flat(self) -> torch.Tensor:
        """Both blocks as one vector, layout feature | count."""
        return torch.cat([self.feature.reshape(-1), self.count.reshape(-1)])


def feature_release_norm(clip: float, count_coordinate: float | None) -> float:
    """L2 bound of one sample's contribution to :func:`per_class_feature_sums`: its feature
    clipped to ``clip`` and the count coordinate c together, sqrt(clip^2 + c^2)."""
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    return math.sqrt(clip * clip + c * c)


@torch.no_grad()
def per_class_feature_sums(
    f: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    clip: float,
    count_coordinate: float | None = None,
    into: FeatureSums | None = None,
) -> FeatureSums:
    """Per-class sums of features clipped per sample to L2 norm ``clip`` (client side).

    f: features (B x dim) of any extractor; y: labels (B, int64) in [0, num_classes);
    clip: L2 norm per sample of the feature (Opacus's factor min(1, clip / (norm + 1e-6)),
    the norm taken in float64 so that no input, however large, escapes it);
    count_coordinate: constant extra coordinate c of each sample, *not* scaled: the feature
    is clipped on its own, so the count sum is exactly c times the samples summed (before
    noise) and one sample moves the release (feature | count) by at most
    :func:`feature_release_norm` (clip, c) under add/remove-one-sample adjacency.
    Non-finite features are refused (a model that produced them has diverged).

    into: a release of the same shapes to which this batch's sums are added in place.
    """
    if f.dim() != 2 or y.dim() != 1 or f.shape[0] != y.shape[0]:
        raise ConfigError(f"need f (B x dim) and y (B), got {tuple(f.shape)} and {tuple(y.shape)}")
    check_clip(clip)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if not bool(torch.isfinite(f).all()):
        raise ConfigError("features contain NaN or infinity: the model has diverged (lower --lr)")
    y = y.to(torch.long)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    dim = f.shape[1]
    if into is not None and into.feature.shape != (num_classes, dim):
        raise ConfigError(f"into has shape {tuple(into.feature.shape)}; these inputs need {(num_classes, dim)}")
    f64 = f.to(torch.float64)
    # scale first so that squaring cannot overflow, then the exact Opacus factor
    peak = f64.abs().amax(dim=1, keepdim=True).clamp_min(1e-300) if dim else f64.new_ones(f.shape[0], 1)
    norm = (torch.linalg.vector_norm(f64 / peak, dim=1) * peak.squeeze(1)) if dim else f64.new_zeros(f.shape[0])
    factor = torch.clamp(clip / (norm + OPACUS_EPS), max=1.0)
    # Floating point: the float64 norm is off by a few ulps (relative ~dim * 1e-16), and
    # rounding to a narrower dtype moves a norm by at most (1 + eps) more; shrink by both so
    # the stored contribution is within ``clip`` exactly as computed (a relative 1e-12 in float64).
    narrow = 0.0 if f.dtype == torch.float64 else torch.finfo(f.dtype).eps
    shrink = (1.0 - SHRINK_FLOAT64) / (1.0 + narrow)
    scaled = (f64 * (factor * shrink)[:, None]).to(f.dtype)
    if into is None:
        into = FeatureSums(f.new_zeros(num_classes, dim), f.new_zeros(num_classes), 0)
    into.feature.index_add_(0, y, scaled)
    if count_coordinate is not None:
        # the coordinate as stored, rounded toward zero so that it never exceeds the stated one
        c = torch.tensor(float(count_coordinate), dtype=f.dtype, device=f.device)
        if float(c) > float(count_coordinate):
            c = torch.nextafter(c, torch.zeros_like(c))
        into.count.index_add_(0, y, c.expand(y.shape[0]).contiguous())
    return dataclasses.replace(into, clipped=into.clipped + int((factor < 1.0).sum()))


# -- the Gaussian-moment release: per-class sums of unit-ball features and their squares -----------
@dataclass(frozen=True, slots=True)
class MomentSums:
    """Per-class first and second (diagonal) moments of one client's batch (client side).

    Each sample's feature is clipped to L2 norm ``clip`` and divided by ``clip`` (u_i, norm
    <= 1). feature (C x dim): sum over class-c samples of u_i; square (C x dim): sum of u_i *
    u_i (entrywise; its L2 norm is sum_j u_ij^4 under the root, <= |u_i|^2 <= 1); count (C):
    the summed constant count coordinate; clipped: samples whose factor was < 1.
    """

    feature: torch.Tensor
    square: torch.Tensor
    count: torch.Tensor
    clipped: int

    def flat(self) -> torch.Tensor:
        """All blocks as one vector, layout feature | square | count."""
        return torch.cat([self.feature.reshape(-1), self.square.reshape(-1), self.count.reshape(-1)])


def moment_release_norm(count_coordinate: float | None) -> float:
    """L2 bound of one sample's contribution to :func:`per_class_moment_sums`: a unit-ball
    feature (<= 1), its entrywise square (<= 1) and the count coordinate c, sqrt(2 + c^2)."""
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    return math.sqrt(2.0 + c * c)


@torch.no_grad()
def per_class_moment_sums(
    f: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    clip: float,
    count_coordinate: float | None = None,
) -> MomentSums:
    """Per-class sums of clipped, rescaled features u_i = s_i f_i / clip (s_i = Opacus's
    min(1, clip / (|f_i| + 1e-6)), the norm in float64) and of u_i * u_i (client side).

    Under add/remove-one-sample adjacency the concatenation (feature | square | count) moves
    by at most :func:`moment_release_norm` (count_coordinate): |u_i| <= 1, |u_i * u_i| <=
    |u_i|^2 <= 1, the count coordinate c is constant and not scaled. Computed and returned
    in float64 whatever ``f.dtype``, u shrunk by a relative 1e-12 (and ``f.dtype``'s epsilon)
    covering the rounding of the norm. Non-finite features are refused.
    """
    if f.dim() != 2 or y.dim() != 1 or f.shape[0] != y.shape[0]:
        raise ConfigError(f"need f (B x dim) and y (B), got {tuple(f.shape)} and {tuple(y.shape)}")
    check_clip(clip)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if not bool(torch.isfinite(f).all()):
        raise ConfigError("features contain NaN or infinity: the model has diverged (lower --lr)")
    y = y.to(torch.long)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    dim = f.shape[1]
    f64 = f.to(torch.float64)
    peak = f64.abs().amax(dim=1, keepdim=True).clamp_min(1e-300) if dim else f64.new_ones(f.shape[0], 1)
    norm = (torch.linalg.vector_norm(f64 / peak, dim=1) * peak.squeeze(1)) if dim else f64.new_zeros(f.shape[0])
    factor = torch.clamp(clip / (norm + OPACUS_EPS), max=1.0)
    narrow = 0.0 if f.dtype == torch.float64 else torch.finfo(f.dtype).eps
    shrink = (1.0 - SHRINK_FLOAT64) / (1.0 + narrow)
    u = f64 * (factor * shrink / clip)[:, None]
    feature = f64.new_zeros(num_classes, dim).index_add_(0, y, u)
    square = f64.new_zeros(num_classes, dim).index_add_(0, y, u * u)
    count = f64.new_zeros(num_classes)
    if count_coordinate is not None:
        count.index_add_(0, y, f64.new_full((y.shape[0],), float(count_coordinate)))
    return MomentSums(feature, square, count, int((factor < 1.0).sum()))
