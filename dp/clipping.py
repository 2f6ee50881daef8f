"""Per-sample clipping of per-class gradient releases, in closed form (client side).

For a linear head logits = W f + b with cross-entropy, sample i's gradient is determined
by g_i = softmax(logits_i) - onehot(y_i) (C entries):

    dL/df_i = W^T g_i (dim),  dL/dW_i = g_i f_i^T (C x dim),  dL/db_i = g_i (C)

and ||g_i f_i^T||_F = |g_i| |f_i|, so the joint L2 norm of the concatenation (plus an
optional constant count coordinate c) is sqrt(|W^T g_i|^2 + |g_i|^2 |f_i|^2 + |g_i|^2 + c^2)
without forming any per-sample weight gradient. Each contribution is scaled by Opacus's
flat-clipping factor min(1, clip / (norm + 1e-6)) and summed into class y_i's block.
The class-c weight block sum_i s_i g_i f_i^T is one matrix product per class, done as one
batched product over classes (padded to the largest class count), or as one dense product
against one-hot rows when C^2 B dim is small.

Under add/remove-one-sample adjacency the concatenated sums change by one clipped
contribution, so their L2 sensitivity is ``clip`` (the count coordinate included).
Norms are in the units of the loss gradient (per sample, not averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dp.errors import ConfigError

OPACUS_EPS = 1e-6  # Opacus flat clipping: factor = min(1, C / (norm + 1e-6))
_ONEHOT_FLOPS = 2.0e7  # below this C^2*B*dim, a dense one-hot product is cheaper


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


def _check(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
           clip: float) -> None:
    if f.dim() != 2 or w.dim() != 2 or b.dim() != 1 or y.dim() != 1:
        raise ConfigError("need f (B x dim), y (B), W (C x dim), b (C)")
    if f.shape[1] != w.shape[1] or w.shape[0] != b.shape[0] or f.shape[0] != y.shape[0]:
        raise ConfigError(f"shape mismatch: f {tuple(f.shape)}, y {tuple(y.shape)}, "
                          f"W {tuple(w.shape)}, b {tuple(b.shape)}")
    if not clip > 0:
        raise ConfigError(f"clip norm must be > 0, got {clip}")


def _weight_sums(gs: torch.Tensor, f: torch.Tensor, y: torch.Tensor, n_cls: int,
                 out: torch.Tensor | None) -> torch.Tensor:
    """sum_{i: y_i = c} gs_i f_i^T for every class c, as (C x C x dim), into ``out``."""
    bsz, dim = f.shape
    if out is None:
        out = f.new_empty(n_cls, n_cls, dim)
    if n_cls * n_cls * bsz * dim <= _ONEHOT_FLOPS:
        onehot = torch.nn.functional.one_hot(y, n_cls).to(gs.dtype)
        rows = (onehot[:, :, None] * gs[:, None, :]).reshape(bsz, n_cls * n_cls)
        torch.mm(rows.T, f, out=out.view(n_cls * n_cls, dim))
        return out
    ys, order = torch.sort(y, stable=True)
    counts = torch.bincount(y, minlength=n_cls)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(bsz, device=y.device) - starts[ys]
    m = int(counts.max())
    gp = gs.new_zeros(n_cls, m, n_cls)  # class c's (<= m) samples, zero padded
    fp = f.new_zeros(n_cls, m, dim)
    gp[ys, pos] = gs[order]
    fp[ys, pos] = f[order]
    return torch.bmm(gp.transpose(1, 2).contiguous(), fp, out=out)


@torch.no_grad()
def per_class_clipped_sums(
    f: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    clip: float,
    count_coordinate: float | None = None,
    out: PerClassSums | None = None,
) -> PerClassSums:
    """Clipped per-sample CE gradients of a linear head, summed per class (client side).

    f: features (B x dim) of the frozen extractor; y: labels (B, int64); w, b: the global
    classifier (C x dim, C); clip: L2 norm per sample; count_coordinate: constant extra
    coordinate clipped jointly with the gradient (the noisy count rides in the release).
    out: a previous result of the same shapes whose weight tensor (C x C x dim, the large
    one) is overwritten instead of allocating a fresh one (saves page faults per call).
    """
    _check(f, y, w, b, clip)
    n_cls = w.shape[0]
    y = y.to(torch.long)
    g = torch.softmax(f @ w.T + b, dim=1)
    g[torch.arange(f.shape[0], device=f.device), y] -= 1.0
    gf = g @ w
    g2 = (g * g).sum(1)
    sq = (gf * gf).sum(1) + g2 * (f * f).sum(1) + g2
    c = 0.0 if count_coordinate is None else float(count_coordinate)
    norm = torch.sqrt(sq + c * c)
    factor = torch.clamp(clip / (norm + OPACUS_EPS), max=1.0)
    gs = g * factor[:, None]
    members = torch.nn.functional.one_hot(y, n_cls).to(f.dtype).T  # C x B class membership
    feature = members @ (gf * factor[:, None])
    bias = members @ gs
    count = members @ (factor * c) if count_coordinate is not None else f.new_zeros(n_cls)
    if out is not None and out.weight.shape != (n_cls, n_cls, f.shape[1]):
        raise ConfigError("out has the wrong shape for these inputs")
    weight = _weight_sums(gs, f, y, n_cls, None if out is None else out.weight)
    return PerClassSums(feature, weight, bias, count, int((factor < 1.0).sum()))


def clip_vector(v: np.ndarray | torch.Tensor, clip: float
                ) -> tuple[np.ndarray | torch.Tensor, bool]:
    """Client unit (DP-FedAvg): scale the whole upload vector to L2 norm <= ``clip``.

    Uses the same factor as Opacus, min(1, clip / (norm + 1e-6)); returns the clipped
    vector (a new array/tensor of the same kind) and whether it was scaled down.
    """
    if not clip > 0:
        raise ConfigError(f"clip norm must be > 0, got {clip}")
    if isinstance(v, torch.Tensor):
        norm = float(torch.linalg.vector_norm(v.detach().double()))
    else:
        v = np.asarray(v, dtype=np.float64)
        norm = float(np.linalg.norm(v))
    factor = min(1.0, clip / (norm + OPACUS_EPS))
    return v * factor, factor < 1.0
