"""REFERENCE implementations of :mod:`secure_fed.fl.matching`, one class at a time.

*** For tests and benchmarks only: do not use these in training. ***

They follow the official FedHPro code's structure (a Python loop over classes, autograd
with ``create_graph=True`` through ``F.cross_entropy`` of the classifier, ``torch.optim.SGD``)
but with the math of DESIGN.md section 2: a true cosine per class (not the entry-wise
"matching" distance), classes with a zero aggregate skipped. They are deliberately
straightforward so that the batched versions can be checked against them and timed
against them. Server side, on the device of their inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ref_feature_matching_loss",
    "ref_hp_feature_gradient",
    "ref_match_hyper_prototypes",
    "ref_match_meta_prototypes",
    "ref_meta_classifier_gradient",
    "ref_meta_matching_loss",
]


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of two vectors (flattened), 0 if either is zero."""
    return torch.dot(F.normalize(a.flatten(), dim=0), F.normalize(b.flatten(), dim=0))


def ref_hp_feature_gradient(P_c: Tensor, W: Tensor, b: Tensor, c: int) -> Tensor:
    """REFERENCE. Autograd (create_graph) gradient of CE(W p + b, c) w.r.t. each row p of
    P_c (L x dim), averaged over the L rows; differentiable w.r.t. P_c. Returns (dim,)."""
    labels = torch.full((P_c.shape[0],), c, dtype=torch.long, device=P_c.device)
    loss = F.cross_entropy(F.linear(P_c, W, b), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, P_c, create_graph=True)
    return grad.mean(dim=0)


def ref_feature_matching_loss(G: Tensor, g: list[Tensor], active: Tensor) -> Tensor:
    """REFERENCE. sum over active classes with nonzero G_c of 1 - cos(G_c, g[c])."""
    loss = G.new_zeros(())
    for c in range(G.shape[0]):
        if bool(active[c]) and bool(G[c].ne(0).any()):
            loss = loss + (1.0 - _cos(G[c], g[c]))
    return loss


def ref_match_hyper_prototypes(
    P0: Tensor, W: Tensor, b: Tensor, G: Tensor, active: Tensor, *, steps: int = 30,
    lr: float = 0.1,
) -> Tensor:
    """REFERENCE. Per-class loop version of ``matching.match_hyper_prototypes``."""
    P = P0.detach().clone().requires_grad_(True)
    W, b, G = W.detach(), b.detach(), G.detach()
    opt = torch.optim.SGD([P], lr=lr)
    for _ in range(steps):
        loss = G.new_zeros(())
        for c in range(P.shape[0]):
            if bool(active[c]) and bool(G[c].ne(0).any()):
                g_c = ref_hp_feature_gradient(P[c], W, b, c)
                loss = loss + (1.0 - _cos(G[c], g_c))
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            opt.step()
    return P.detach()


def ref_meta_classifier_gradient(
    M_c: Tensor, W: Tensor, b: Tensor, c: int
) -> tuple[Tensor, Tensor]:
    """REFERENCE. Autograd (create_graph) gradient of the mean over the R rows of M_c of
    CE(W m + b, c) w.r.t. (W, b); differentiable w.r.t. M_c. Returns (C x dim, C)."""
    W = W.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    labels = torch.full((M_c.shape[0],), c, dtype=torch.long, device=M_c.device)
    loss = F.cross_entropy(F.linear(M_c, W, b), labels, reduction="mean")
    gW, gb = torch.autograd.grad(loss, (W, b), create_graph=True)
    return gW, gb


def ref_meta_matching_loss(
    GW: Tensor, Gb: Tensor, gW: list[Tensor], gb: list[Tensor], active: Tensor
) -> Tensor:
    """REFERENCE. Per class: mean over nonzero rows j of GW_c of 1 - cos(GW_c[j], gW_c[j])
    plus 1 - cos(Gb_c, gb_c) (if Gb_c is nonzero); summed over active nonzero classes."""
    loss = GW.new_zeros(())
    for c in range(GW.shape[0]):
        if not bool(active[c]) or not (bool(GW[c].ne(0).any()) or bool(Gb[c].ne(0).any())):
            continue
        rows = GW[c].ne(0).any(dim=-1)  # rows of this class, compared one by one
        if bool(rows.any()):
            row_cos = (F.normalize(GW[c], dim=-1) * F.normalize(gW[c], dim=-1)).sum(dim=-1)
            loss = loss + (1.0 - row_cos[rows]).mean()
        if bool(Gb[c].ne(0).any()):
            loss = loss + (1.0 - _cos(Gb[c], gb[c]))
    return loss


def ref_match_meta_prototypes(
    M0: Tensor, W: Tensor, b: Tensor, GW: Tensor, Gb: Tensor, active: Tensor, *,
    steps: int = 30, lr: float = 0.1,
) -> Tensor:
    """REFERENCE. Per-class loop version of ``matching.match_meta_prototypes``."""
    M = M0.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([M], lr=lr)
    for _ in range(steps):
        grads = [ref_meta_classifier_gradient(M[c], W, b, c) for c in range(M.shape[0])]
        loss = ref_meta_matching_loss(
            GW, Gb, [g[0] for g in grads], [g[1] for g in grads], active
        )
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            opt.step()
    return M.detach()
