"""Tests for the server-side gradient matching (secure_fed.fl.matching)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import ConfigError
from secure_fed.fl.matching import (
    active_classes,
    feature_matching_loss,
    hp_feature_gradients,
    init_hyper_prototypes,
    match_hyper_prototypes,
    match_meta_prototypes,
    meta_classifier_gradients,
    meta_matching_loss,
    train_meta_classifier,
)
from tests.reference.matching_reference import (
    ref_feature_matching_loss,
    ref_hp_feature_gradient,
    ref_match_hyper_prototypes,
    ref_match_meta_prototypes,
    ref_meta_classifier_gradient,
    ref_meta_matching_loss,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _client_sum(
    W: torch.Tensor, b: torch.Tensor, clients: int, samples: int, g: torch.Generator
) -> torch.Tensor:
    """SUM over clients and their samples of per-sample feature gradients
    W^T(softmax(W f + b) - e_c), features f near the class direction (moderate logits)."""
    C, dim = W.shape
    n = clients * samples
    feats = torch.randn(C, n, dim, generator=g, dtype=W.dtype)
    feats = feats + 2.0 * F.normalize(W, dim=-1).unsqueeze(1)
    return hp_feature_gradients(feats, W, b) * n


def _problem(
    C: int = 6, L: int = 3, dim: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random classifier at a realistic scale (logits of order 1), prototypes from the
    standard normal init and a client-gradient aggregate built the way clients build it."""
    g = _gen(seed)
    W = 3.0 * torch.randn(C, dim, generator=g, dtype=dtype) / math.sqrt(dim)
    b = 0.1 * torch.randn(C, generator=g, dtype=dtype)
    P = torch.randn(C, L, dim, generator=g, dtype=dtype)
    G = _client_sum(W, b, clients=1, samples=7, g=g)
    active = torch.ones(C, dtype=torch.bool)
    return {"W": W, "b": b, "P": P, "G": G, "active": active}


# ---------------------------------------------------------------- feature gradient


def test_closed_form_hp_gradient_equals_autograd_create_graph() -> None:
    p = _problem(C=5, L=4, dim=6, dtype=torch.float64)
    P = p["P"].clone().requires_grad_(True)
    batched = hp_feature_gradients(P, p["W"], p["b"])
    loop = torch.stack([ref_hp_feature_gradient(P[c], p["W"], p["b"], c) for c in range(5)])
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-12)
    # second order: the gradient of the matching loss w.r.t. P agrees as well
    (d_batched,) = torch.autograd.grad(feature_matching_loss(p["G"], batched, p["active"]), P)
    (d_loop,) = torch.autograd.grad(ref_feature_matching_loss(p["G"], list(loop), p["active"]), P)
    assert d_batched.abs().max() > 1e-3
    torch.testing.assert_close(d_batched, d_loop, rtol=0, atol=1e-12)


def test_hp_gradient_hand_value_one_row() -> None:
    # C=2, dim=2, W = I, b = 0, p = (ln 3, 0): softmax = (3/4, 1/4); class 0 -> W^T(s - e_0)
    P = torch.tensor([[[math.log(3.0), 0.0]], [[math.log(3.0), 0.0]]], dtype=torch.float64)
    W, b = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    g = hp_feature_gradients(P, W, b)
    expected = torch.tensor([[-0.25, 0.25], [0.75, -0.75]], dtype=torch.float64)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------- matching loss


def test_matching_loss_hand_computed_two_class_toy() -> None:
    G = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    g = torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    # class 0: 1 - 1/sqrt(2) = 0.29289322; class 1: 1 - (12 + 12) / 25 = 0.04
    both = feature_matching_loss(G, g, torch.tensor([True, True]))
    assert both.item() == pytest.approx(1.0 - 1.0 / math.sqrt(2.0) + 0.04, abs=1e-6)
    first = feature_matching_loss(G, g, torch.tensor([True, False]))
    assert first.item() == pytest.approx(0.29289322, abs=1e-6)
    zero_aggregate = feature_matching_loss(
        torch.tensor([[0.0, 0.0], [3.0, 4.0]]), g, torch.tensor([True, True])
    )
    assert zero_aggregate.item() == pytest.approx(0.04, abs=1e-6)


def test_batched_matching_loss_equals_per_class_loop() -> None:
    C, dim = 40, 16
    g = _gen(3)
    G = torch.randn(C, dim, generator=g, dtype=torch.float64)
    G[5] = 0.0  # zero aggregate: inactive
    syn = torch.randn(C, dim, generator=g, dtype=torch.float64)
    active = torch.rand(C, generator=g) < 0.7
    batched = feature_matching_loss(G, syn, active)
    loop = ref_feature_matching_loss(G, list(syn), active)
    assert abs(batched.item() - loop.item()) < 1e-6
    # float32 too, at float32 resolution
    b32 = feature_matching_loss(G.float(), syn.float(), active)
    assert abs(b32.item() - loop.item()) < 1e-5


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(min_value=1e-3, max_value=1e4), seed=st.integers(0, 10_000))
def test_matching_loss_is_scale_free(scale: float, seed: int) -> None:
    g = _gen(seed)
    G = torch.randn(8, 5, generator=g, dtype=torch.float64)
    syn = torch.randn(8, 5, generator=g, dtype=torch.float64)
    active = torch.ones(8, dtype=torch.bool)
    a = feature_matching_loss(G, syn, active)
    b = feature_matching_loss(G * scale, syn, active)
    assert abs(a.item() - b.item()) < 1e-9


def test_active_classes_masks_zero_blocks() -> None:
    G = torch.tensor([[0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    mask = active_classes(G, torch.tensor([True, True, False]))
    assert mask.tolist() == [True, False, False]


# --------------------------------------------------------------- matching (SGD)


def test_matching_from_sum_equals_matching_from_mean() -> None:
    p = _problem(C=10, L=5, dim=32, seed=1)
    g = _gen(101)
    clients = [_client_sum(p["W"], p["b"], clients=1, samples=n, g=g) for n in (3, 11, 6, 20, 9)]
    G_sum = torch.stack(clients).sum(dim=0)
    G_mean = G_sum / len(clients)
    P_sum = match_hyper_prototypes(p["P"], p["W"], p["b"], G_sum, p["active"], steps=30)
    P_mean = match_hyper_prototypes(p["P"], p["W"], p["b"], G_mean, p["active"], steps=30)
    assert (P_sum - p["P"]).abs().max() > 1e-2  # matching actually moved P
    torch.testing.assert_close(P_sum, P_mean, rtol=0, atol=1e-5)


def test_batched_matching_equals_reference_loop_after_30_steps() -> None:
    p = _problem(C=8, L=5, dim=16, seed=2, dtype=torch.float64)
    p["active"][3] = False
    p["G"][6] = 0.0
    batched = match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"])
    loop = ref_match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"])
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-10)


def test_matching_reduces_loss_and_leaves_inactive_classes_unchanged() -> None:
    p = _problem(C=6, L=5, dim=16, seed=4)
    p["active"][1] = False
    p["G"][4] = 0.0
    W, b = p["W"], p["b"]
    P = match_hyper_prototypes(p["P"], W, b, p["G"], p["active"], steps=30, lr=1.0)
    before = feature_matching_loss(p["G"], hp_feature_gradients(p["P"], W, b), p["active"])
    after = feature_matching_loss(p["G"], hp_feature_gradients(P, W, b), p["active"])
    assert after.item() < 0.75 * before.item()
    assert torch.equal(P[1], p["P"][1]) and torch.equal(P[4], p["P"][4])
    assert not torch.equal(P[0], p["P"][0])
    assert not P.requires_grad


def test_matching_works_under_no_grad_and_zero_steps() -> None:
    p = _problem(seed=5)
    with torch.no_grad():
        P = match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"], steps=3)
    assert not torch.equal(P, p["P"])
    same = match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"], steps=0)
    assert torch.equal(same, p["P"]) and same.data_ptr() != p["P"].data_ptr()


def test_matching_rejects_bad_shapes_and_schedule() -> None:
    p = _problem(C=4, L=2, dim=3)
    with pytest.raises(ConfigError):
        match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"][:3], p["active"])
    with pytest.raises(ConfigError):
        match_hyper_prototypes(p["P"][:, :, :2], p["W"], p["b"], p["G"], p["active"])
    with pytest.raises(ConfigError):
        match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"], lr=-1.0)
    with pytest.raises(ConfigError):
        feature_matching_loss(p["G"], p["G"], p["active"][:2])


def test_init_hyper_prototypes_is_seeded_standard_normal() -> None:
    a = init_hyper_prototypes(10, 5, 64, _gen(7), "cpu")
    b = init_hyper_prototypes(10, 5, 64, _gen(7), "cpu")
    c = init_hyper_prototypes(10, 5, 64, _gen(8), "cpu")
    assert a.shape == (10, 5, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item()) < 0.1 and abs(a.std().item() - 1.0) < 0.1
    with pytest.raises(ConfigError):
        init_hyper_prototypes(0, 5, 64, _gen(7), "cpu")


# ---------------------------------------------------------------- meta prototypes


def test_meta_gradients_equal_closed_form_outer_products() -> None:
    C, R, dim = 4, 3, 5
    g = _gen(9)
    M = torch.randn(C, R, dim, generator=g, dtype=torch.float64)
    W = torch.randn(C, dim, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    gW, gb = meta_classifier_gradients(M, W, b)
    assert gW.shape == (C, C, dim) and gb.shape == (C, C)
    for c in range(C):
        want_W = torch.zeros(C, dim, dtype=torch.float64)
        want_b = torch.zeros(C, dtype=torch.float64)
        for r in range(R):
            z = [float(W[k] @ M[c, r] + b[k]) for k in range(C)]
            top = max(z)
            e = [math.exp(v - top) for v in z]
            probs = torch.tensor([v / sum(e) for v in e], dtype=torch.float64)
            residual = probs - F.one_hot(torch.tensor(c), C).double()
            want_W += torch.outer(residual, M[c, r]) / R
            want_b += residual / R
        torch.testing.assert_close(gW[c], want_W, rtol=0, atol=1e-12)
        torch.testing.assert_close(gb[c], want_b, rtol=0, atol=1e-12)
        ref_W, ref_b = ref_meta_classifier_gradient(M[c], W, b, c)
        torch.testing.assert_close(gW[c], ref_W, rtol=0, atol=1e-12)
        torch.testing.assert_close(gb[c], ref_b, rtol=0, atol=1e-12)


def _meta_problem(C: int = 5, R: int = 4, dim: int = 6, seed: int = 11) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    W = torch.randn(C, dim, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(C, generator=g, dtype=torch.float64)
    M = torch.randn(C, R, dim, generator=g, dtype=torch.float64)
    real = torch.randn(C, 9, dim, generator=g, dtype=torch.float64) + W.unsqueeze(1)
    GW, Gb = meta_classifier_gradients(real, W, b)
    return {"W": W, "b": b, "M": M, "GW": GW * 9, "Gb": Gb * 9,
            "active": torch.ones(C, dtype=torch.bool)}


def test_meta_matching_loss_equals_loop_with_zero_rows_skipped() -> None:
    p = _meta_problem()
    GW, Gb = p["GW"].clone(), p["Gb"].clone()
    GW[0, 2] = 0.0  # one zero row: left out of class 0's mean
    GW[3], Gb[3] = 0.0, 0.0  # whole class zero: inactive
    p["active"][1] = False
    gW, gb = meta_classifier_gradients(p["M"], p["W"], p["b"])
    batched = meta_matching_loss(GW, Gb, gW, gb, p["active"])
    loop = ref_meta_matching_loss(GW, Gb, list(gW), list(gb), p["active"])
    assert abs(batched.item() - loop.item()) < 1e-9
    # hand check of the skip rule on class 0: mean over the 4 nonzero rows, not 5
    rows = [1 - F.cosine_similarity(GW[0, j], gW[0, j], dim=0) for j in (0, 1, 3, 4)]
    class0 = torch.stack(rows).mean() + 1 - F.cosine_similarity(Gb[0], gb[0], dim=0)
    only0 = meta_matching_loss(GW, Gb, gW, gb, torch.tensor([True, False, False, False, False]))
    assert abs(only0.item() - class0.item()) < 1e-12


def test_meta_matching_equals_reference_and_is_scale_free() -> None:
    p = _meta_problem()
    p["active"][2] = False
    args = (p["M"], p["W"], p["b"], p["GW"], p["Gb"], p["active"])
    batched = match_meta_prototypes(*args, steps=10)
    loop = ref_match_meta_prototypes(*args, steps=10)
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-10)
    assert torch.equal(batched[2], p["M"][2]) and not torch.equal(batched[0], p["M"][0])
    mean = match_meta_prototypes(p["M"], p["W"], p["b"], p["GW"] / 9, p["Gb"] / 9,
                                 p["active"], steps=10)
    torch.testing.assert_close(batched, mean, rtol=0, atol=1e-10)


def test_meta_matching_reduces_loss() -> None:
    p = _meta_problem(C=4, R=6, dim=8, seed=12)
    M = match_meta_prototypes(p["M"], p["W"], p["b"], p["GW"], p["Gb"], p["active"], steps=30)
    def loss(X: torch.Tensor) -> float:
        gW, gb = meta_classifier_gradients(X, p["W"], p["b"])
        return meta_matching_loss(p["GW"], p["Gb"], gW, gb, p["active"]).item()
    assert loss(M) < 0.8 * loss(p["M"])


def test_train_meta_classifier_separates_active_classes() -> None:
    C, R, dim = 4, 10, 8
    g = _gen(13)
    centers = 3.0 * torch.randn(C, 1, dim, generator=g)
    M = centers + 0.3 * torch.randn(C, R, dim, generator=g)
    active = torch.tensor([True, True, True, False])
    layer = train_meta_classifier(M, active, C, steps=100, lr=0.1, generator=_gen(1))
    pred = layer(M[:3].reshape(-1, dim)).argmax(dim=1)
    assert torch.equal(pred, torch.arange(3).repeat_interleave(R))
    again = train_meta_classifier(M, active, C, steps=100, lr=0.1, generator=_gen(1))
    assert torch.equal(layer.weight, again.weight)
    # inactive class 3 rows do not enter the loss: moving them changes nothing
    M2 = M.clone()
    M2[3] = 100.0
    other = train_meta_classifier(M2, active, C, steps=100, lr=0.1, generator=_gen(1))
    torch.testing.assert_close(layer.weight, other.weight, rtol=0, atol=1e-6)


def test_train_meta_classifier_from_init_leaves_init_alone() -> None:
    C, R, dim = 3, 5, 4
    M = torch.randn(C, R, dim, generator=_gen(14))
    init = torch.nn.Linear(dim, C)
    before = init.weight.detach().clone()
    untouched = train_meta_classifier(M, torch.zeros(C, dtype=torch.bool), C, init=init)
    assert torch.equal(untouched.weight, before) and untouched is not init
    trained = train_meta_classifier(M, torch.ones(C, dtype=torch.bool), C, init=init, steps=5)
    assert torch.equal(init.weight, before) and not torch.equal(trained.weight, before)
    with pytest.raises(ConfigError):
        train_meta_classifier(M, torch.ones(C, dtype=torch.bool), C)  # no init, no generator


def test_matching_with_no_active_class_returns_p_unchanged() -> None:
    p = _problem(seed=6)
    none = torch.zeros_like(p["active"])
    P = match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], none)
    assert torch.equal(P, p["P"])
    M0 = torch.randn(6, 2, 8, generator=_gen(6))
    GW, Gb = meta_classifier_gradients(M0, p["W"], p["b"])
    assert torch.equal(match_meta_prototypes(M0, p["W"], p["b"], GW, Gb, none), M0)


# ---------------------------------------------------------------------------- CUDA

CUDA_ATOL = 1e-4  # float32, 30 SGD steps: CPU and CUDA reduce in different orders


@pytest.mark.cuda
@cuda
def test_hp_matching_cuda_matches_cpu() -> None:
    p = _problem(C=20, L=5, dim=64, seed=21)
    cpu = match_hyper_prototypes(p["P"], p["W"], p["b"], p["G"], p["active"])
    dev = {k: v.cuda() for k, v in p.items()}
    gpu = match_hyper_prototypes(dev["P"], dev["W"], dev["b"], dev["G"], dev["active"])
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=CUDA_ATOL)


@pytest.mark.cuda
@cuda
def test_meta_matching_cuda_matches_cpu() -> None:
    p = {k: v.float() if v.is_floating_point() else v for k, v in _meta_problem().items()}
    args = ("M", "W", "b", "GW", "Gb", "active")
    cpu = match_meta_prototypes(*(p[k] for k in args))
    gpu = match_meta_prototypes(*(p[k].cuda() for k in args))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=CUDA_ATOL)
    layer_gen = torch.Generator(device="cuda").manual_seed(0)
    layer = train_meta_classifier(gpu, p["active"].cuda(), 5, generator=layer_gen)
    assert layer.weight.is_cuda

