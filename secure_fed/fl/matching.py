"""Server-side gradient matching of FedHPro's hyper-prototypes and meta prototypes.

Runs on the **server**, on the device of its inputs, from the decoded secure aggregate only:
``G`` (C x dim) is the SUM over clients of their per-class feature gradients and ``GW``/``Gb``
(C x C x dim, C x C) the SUM of their per-class classifier gradients. Every loss here is a
cosine, which is scale-free, so the sum serves exactly as the mean (no division by the
number of clients or samples; see DESIGN.md section 2).

Every function works on all classes at once with batched tensor ops; nothing loops over
classes in Python and nothing moves data to the host inside the step loops. Per-class
Python-loop versions of the same math live in :mod:`tests.reference.matching_reference`.

Notation: C classes, L hyper-prototype rows per class, R meta-prototype rows per class,
``dim`` the feature width; the classifier is ``logits = W f + b`` with W (C x dim), b (C).
A class is *active* when the caller marks it so AND its aggregate is nonzero.

Cosine: ``cos(a, b) = <a / max(|a|, eps), b / max(|b|, eps)>`` with eps = 1e-12 (as
``torch.nn.functional.normalize``), which is exactly scale-invariant for nonzero inputs and
0 for a zero vector (never NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crypto.errors import ConfigError

__all__ = [
    "active_classes",
    "feature_matching_loss",
    "hp_feature_gradients",
    "init_hyper_prototypes",
    "match_hyper_prototypes",
    "match_meta_prototypes",
    "meta_classifier_gradients",
    "meta_matching_loss",
    "train_meta_classifier",
]


# --------------------------------------------------------------------------- helpers


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last dimension; 0 where either vector is zero."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


def _nonzero_rows(x: Tensor) -> Tensor:
    """Bool mask over all but the last dimension: True where the row has a nonzero entry."""
    return x.ne(0).any(dim=-1)


def _check_classifier(W: Tensor, b: Tensor) -> tuple[int, int]:
    """Validate a linear classifier (W: C x dim, b: C); return (C, dim)."""
    if W.dim() != 2 or b.shape != (W.shape[0],):
        raise ConfigError(
            f"classifier must be W (C x dim) and b (C,), got W {tuple(W.shape)}, "
            f"b {tuple(b.shape)}"
        )
    return W.shape[0], W.shape[1]


def _check_prototypes(X: Tensor, W: Tensor, b: Tensor, name: str) -> None:
    """Validate prototypes X (C x rows x dim) against the classifier (W, b)."""
    C, dim = _check_classifier(W, b)
    if X.dim() != 3 or X.shape[0] != C or X.shape[2] != dim or X.shape[1] < 1:
        raise ConfigError(
            f"{name} must be (C={C}) x (rows >= 1) x (dim={dim}), got {tuple(X.shape)}"
        )


def _check_shape(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != shape:
        raise ConfigError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _check_schedule(steps: int, lr: float) -> None:
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive finite number, got {lr}")


def _class_targets(C: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """One-hot targets e_c, shaped (C, 1, C) to broadcast over the rows of class c."""
    return torch.eye(C, device=device, dtype=dtype).unsqueeze(1)


def active_classes(aggregate: Tensor, active: Tensor) -> Tensor:
    """Bool (C,): the caller's ``active`` AND the class's aggregate block is nonzero.

    ``aggregate`` has the class on dim 0 (C x dim, or C x C x dim); runs on its device.
    """
    nonzero = aggregate.reshape(aggregate.shape[0], -1).ne(0).any(dim=-1)
    return active.to(device=aggregate.device, dtype=torch.bool) & nonzero


# ---------------------------------------------------------------- hyper-prototypes


def init_hyper_prototypes(
    C: int, L: int, dim: int, generator: torch.Generator, device: torch.device | str
) -> Tensor:
    """Initial hyper-prototypes, i.i.d. standard normal, shape (C, L, dim), on ``device``.

    Server side. Drawn from ``generator`` (on its own device), so runs are reproducible;
    the values are public model state, not a secret or noise.
    """
    if min(C, L, dim) < 1:
        raise ConfigError(f"C, L and dim must all be >= 1, got C={C}, L={L}, dim={dim}")
    P = torch.randn(C, L, dim, generator=generator, device=generator.device)
    return P.to(device)


def hp_feature_gradients(P: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Per-class gradient of the classifier's CE w.r.t. the hyper-prototype rows, (C, dim).

    For class c: ``g_c = (1/L) sum_l d CE(W p_{c,l} + b, c) / d p_{c,l}
    = W^T (mean_l softmax(W p_{c,l} + b) - e_c)``. This closed form is differentiable
    w.r.t. P (it equals autograd with ``create_graph=True``; see the tests). Units: the
    feature space of the classifier. Server side; W and b should be the classifier the
    clients used for their uploads.
    """
    _check_prototypes(P, W, b, "P")
    probs = torch.softmax(P @ W.T + b, dim=-1)  # (C, L, C)
    residual = (probs - _class_targets(W.shape[0], P.device, P.dtype)).mean(dim=1)
    return residual @ W  # (C, dim)


def feature_matching_loss(G: Tensor, g: Tensor, active: Tensor) -> Tensor:
    """The paper's L_GM summed over classes: ``sum_{c active} 1 - cos(G_c, g_c)``.

    ``G`` (C x dim) is the aggregated client feature gradient (a sum or a mean: cosine is
    scale-free), ``g`` (C x dim) the hyper-prototype gradient, ``active`` a bool (C,).
    A class whose aggregate G_c is zero is inactive. Returns a 0-dim tensor, differentiable
    w.r.t. ``g`` (inactive classes get an exactly zero gradient). Server side.
    """
    if G.dim() != 2:
        raise ConfigError(f"G must be C x dim, got {tuple(G.shape)}")
    _check_shape(g, tuple(G.shape), "g")
    _check_shape(active, (G.shape[0],), "active")
    mask = active_classes(G, active)
    per_class = 1.0 - _cosine(G, g)
    return torch.where(mask, per_class, torch.zeros_like(per_class)).sum()


def match_hyper_prototypes(
    P0: Tensor,
    W: Tensor,
    b: Tensor,
    G: Tensor,
    active: Tensor,
    *,
    steps: int = 30,
    lr: float = 0.1,
) -> Tensor:
    """Run ``steps`` plain SGD steps (learning rate ``lr``) on P to minimize L_GM.

    Loss per step: ``feature_matching_loss(G, hp_feature_gradients(P, W, b), active)``.
    W and b are frozen. Returns the detached new P (C x L x dim); inactive classes (by
    ``active`` or a zero G_c) are returned bit-for-bit unchanged. Server side, on P0's
    device; the same P comes out whether G is the sum or the mean over clients.
    """
    _check_prototypes(P0, W, b, "P0")
    _check_shape(G, (P0.shape[0], P0.shape[2]), "G")
    _check_schedule(steps, lr)
    mask = active_classes(G, active)
    W, b, G = W.detach(), b.detach(), G.detach()
    P = P0.detach().clone()
    with torch.enable_grad():
        for _ in range(steps):
            P.requires_grad_(True)
            loss = feature_matching_loss(G, hp_feature_gradients(P, W, b), mask)
            (grad,) = torch.autograd.grad(loss, P)
            P = (P - lr * grad).detach()
    return P


# ------------------------------------------------------------------ meta prototypes


def meta_classifier_gradients(M: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class CE gradient w.r.t. the classifier weight and bias, averaged over R rows.

    For class c with rows m_{c,r} and s_{c,r} = softmax(W m_{c,r} + b):
    ``gW_c = (1/R) sum_r (s_{c,r} - e_c) m_{c,r}^T`` (C x dim) and
    ``gb_c = (1/R) sum_r (s_{c,r} - e_c)`` (C). Returns (gW: C x C x dim, gb: C x C),
    differentiable w.r.t. M. Server side.
    """
    _check_prototypes(M, W, b, "M")
    probs = torch.softmax(M @ W.T + b, dim=-1)  # (C, R, C)
    residual = probs - _class_targets(W.shape[0], M.device, M.dtype)
    R = M.shape[1]
    gW = torch.einsum("crk,crd->ckd", residual, M) / R
    return gW, residual.mean(dim=1)


def meta_matching_loss(
    GW: Tensor, Gb: Tensor, gW: Tensor, gb: Tensor, active: Tensor
) -> Tensor:
    """Row-wise cosine matching of classifier gradients, summed over active classes.

    ``sum_{c active} [ mean_{j: GW_c[j] != 0} (1 - cos(GW_c[j], gW_c[j]))
    + (1 - cos(Gb_c, gb_c)) ]``. Rows j of GW_c that are all zero are left out of the
    mean (a class with no nonzero row contributes 0 from the weight term); a zero Gb_c
    contributes 0 from the bias term; a class whose whole aggregate (GW_c, Gb_c) is zero is
    inactive. Shapes: GW, gW (C x C x dim); Gb, gb (C x C); active bool (C,). Server side.
    """
    if GW.dim() != 3 or GW.shape[0] != GW.shape[1]:
        raise ConfigError(f"GW must be C x C x dim, got {tuple(GW.shape)}")
    C = GW.shape[0]
    _check_shape(gW, tuple(GW.shape), "gW")
    _check_shape(Gb, (C, C), "Gb")
    _check_shape(gb, (C, C), "gb")
    _check_shape(active, (C,), "active")
    zero = GW.new_zeros(())
    rows = _nonzero_rows(GW)  # (C, C)
    weight_term = torch.where(rows, 1.0 - _cosine(GW, gW), zero).sum(dim=-1)
    weight_term = weight_term / rows.sum(dim=-1).clamp_min(1).to(GW.dtype)
    bias_rows = _nonzero_rows(Gb)  # (C,)
    bias_term = torch.where(bias_rows, 1.0 - _cosine(Gb, gb), zero)
    mask = active.to(device=GW.device, dtype=torch.bool) & (rows.any(dim=-1) | bias_rows)
    return torch.where(mask, weight_term + bias_term, zero).sum()


def match_meta_prototypes(
    M0: Tensor,
    W: Tensor,
    b: Tensor,
    GW: Tensor,
    Gb: Tensor,
    active: Tensor,
    *,
    steps: int = 30,
    lr: float = 0.1,
) -> Tensor:
    """Run ``steps`` plain SGD steps on the meta prototypes M to minimize
    ``meta_matching_loss(GW, Gb, *meta_classifier_gradients(M, W, b), active)``.

    M0 is C x R x dim (R = 50 in FedHPro); W, b frozen; GW (C x C x dim) and Gb (C x C)
    are the aggregated client classifier gradients (sum or mean: cosine is scale-free).
    Returns the detached new M; inactive classes unchanged. Server side, on M0's device.
    """
    _check_prototypes(M0, W, b, "M0")
    C, dim = W.shape
    _check_shape(GW, (C, C, dim), "GW")
    _check_shape(Gb, (C, C), "Gb")
    _check_schedule(steps, lr)
    W, b, GW, Gb = W.detach(), b.detach(), GW.detach(), Gb.detach()
    mask = active.to(device=GW.device, dtype=torch.bool)
    M = M0.detach().clone()
    with torch.enable_grad():
        for _ in range(steps):
            M.requires_grad_(True)
            gW, gb = meta_classifier_gradients(M, W, b)
            (grad,) = torch.autograd.grad(meta_matching_loss(GW, Gb, gW, gb, mask), M)
            M = (M - lr * grad).detach()
    return M


def _fresh_linear(
    dim: int, num_classes: int, generator: torch.Generator, device: torch.device
) -> nn.Linear:
    """nn.Linear with PyTorch's default init law (U(-1/sqrt(dim), 1/sqrt(dim))) drawn
    from ``generator`` instead of the global RNG."""
    layer = nn.Linear(dim, num_classes, device=device)
    bound = 1.0 / math.sqrt(dim)
    with torch.no_grad():
        for param in (layer.weight, layer.bias):
            u = torch.rand(param.shape, generator=generator, device=generator.device)
            param.copy_((2.0 * u - 1.0) * bound)
    return layer


def train_meta_classifier(
    M: Tensor,
    active: Tensor,
    num_classes: int,
    *,
    steps: int = 100,
    lr: float = 0.1,
    init: nn.Linear | None = None,
    generator: torch.Generator | None = None,
) -> nn.Linear:
    """Train a new linear classifier (dim -> num_classes) on the meta prototypes.

    Full-batch gradient descent, ``steps`` steps of SGD with ``lr``, on the mean CE over
    the rows of M (C x R x dim, label = class index) of the active classes only. Starts from
    a copy of ``init`` if given (``init`` is not modified), else from PyTorch's default
    nn.Linear init law drawn from ``generator``. With no active class it returns the start
    point unchanged. Server side, on M's device; returns the layer in eval mode.
    """
    if M.dim() != 3 or M.shape[0] != num_classes:
        raise ConfigError(f"M must be (num_classes={num_classes}) x R x dim, got {tuple(M.shape)}")
    _check_shape(active, (num_classes,), "active")
    _check_schedule(steps, lr)
    C, R, dim = M.shape
    if init is not None:
        if (init.in_features, init.out_features) != (dim, num_classes) or init.bias is None:
            raise ConfigError(f"init must be nn.Linear({dim}, {num_classes}) with a bias")
        layer = nn.Linear(dim, num_classes, device=M.device, dtype=M.dtype)
        layer.load_state_dict(init.state_dict())
    elif generator is None:
        raise ConfigError("train_meta_classifier needs `init` or a torch.Generator `generator`")
    else:
        layer = _fresh_linear(dim, num_classes, generator, M.device).to(M.dtype)
    X = M.detach().reshape(C * R, dim)
    y = torch.arange(C, device=M.device).repeat_interleave(R)
    weight = active.to(device=M.device, dtype=M.dtype).repeat_interleave(R)
    denom = weight.sum().clamp_min(1.0)
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (F.cross_entropy(layer(X), y, reduction="none") * weight).sum() / denom
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return layer.eval()
