"""Client-side FedHPro pieces: per-class gradient sums against autograd, flat params."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from secure_fed.fl.client import (
    class_mean_features,
    flat_params,
    per_class_gradient_sums,
    personalized_accuracy,
    set_flat_params,
)


def test_per_class_sums_equal_autograd_per_sample_sums() -> None:
    g = torch.Generator().manual_seed(0)
    B, C, D = 17, 4, 6
    f = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C - 1, (B,), generator=g)  # class C-1 absent: its blocks must be zero
    W = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    feat, wg, bg = per_class_gradient_sums(f, y, W, b)
    ref_f = torch.zeros(C, D, dtype=torch.float64)
    ref_w = torch.zeros(C, C, D, dtype=torch.float64)
    ref_b = torch.zeros(C, C, dtype=torch.float64)
    for i in range(B):
        fi = f[i].clone().requires_grad_(True)
        Wi = W.clone().requires_grad_(True)
        bi = b.clone().requires_grad_(True)
        loss = F.cross_entropy((Wi @ fi + bi)[None], y[i : i + 1])
        gf, gw, gb = torch.autograd.grad(loss, (fi, Wi, bi))
        ref_f[y[i]] += gf
        ref_w[y[i]] += gw
        ref_b[y[i]] += gb
    torch.testing.assert_close(feat, ref_f, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(wg, ref_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bg, ref_b, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(feat[C - 1]) == 0 and torch.count_nonzero(wg[C - 1]) == 0


def test_closed_form_is_p_minus_y_times_f() -> None:
    f = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    W = torch.zeros(2, 2, dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    _, wg, bg = per_class_gradient_sums(f, y, W, b)
    # softmax of zero logits is (1/2, 1/2); p - y = (-1/2, 1/2)
    torch.testing.assert_close(bg[0], torch.tensor([-0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(wg[0], torch.tensor([[-0.5, -1.0], [0.5, 1.0]], dtype=torch.float64))


def test_class_means_and_personalized_accuracy() -> None:
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 2])
    means = class_mean_features(f, y, 3)
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    hits = torch.tensor([True, False, True, True])
    test_y = torch.tensor([0, 0, 1, 2])
    # client holds only class 0 -> accuracy on class 0 = 0.5
    assert abs(personalized_accuracy(hits, test_y, torch.tensor([0, 0]), 3) - 0.5) < 1e-12


def test_flat_params_roundtrip() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    v = flat_params(m)
    set_flat_params(m, v * 2)
    torch.testing.assert_close(flat_params(m), v * 2)
