"""DP-SGD through Opacus with keystream sampling and noise."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from crypto.rng import KeystreamRNG
from dp.dpsgd import (
    FACTORS,
    FactoredLinearGradSampleModule,
    KeystreamDPOptimizer,
    KeystreamPoissonSampler,
    private_local_training,
)
from dp.errors import ConfigError
from dp.mechanisms import GaussianMechanism
from dp.normal import keystream_gaussian, keystream_standard_normal

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GroupNorm(2, 8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _ce(m: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(m(xb), yb)


def _train(seed: int, **kw: float) -> tuple[torch.nn.Module, object]:
    x, y = _data()
    m = _model()
    args = dict(epochs=2, batch_size=16, lr=0.5, noise_multiplier=0.3, max_grad_norm=1.0)
    args.update(kw)
    rep = private_local_training(m, _ce, x, y, rng=KeystreamRNG.from_seed(seed), **args)
    return m, rep


def test_runs_opacus_schedule_and_removes_hooks() -> None:
    m, rep = _train(1)
    q = 1 / math.ceil(120 / 16)
    assert rep.sample_rate == q and rep.steps == 2 * int(1 / q)
    ev = rep.event("client-3", 4)
    assert (ev.noise_multiplier, ev.sample_rate, ev.steps, ev.subject) == (0.3, q, rep.steps,
                                                                          "client-3")
    assert all(not hasattr(p, "grad_sample") for p in m.parameters())
    assert all(not mod._forward_hooks and not mod._backward_hooks for mod in m.modules())


def test_learns_with_small_noise() -> None:
    x, y = _data()
    before = float(_ce(_model(), x, y))
    m, _ = _train(2, epochs=6, noise_multiplier=0.05)
    assert float(_ce(m, x, y)) < before - 0.1


def test_seeded_runs_reproduce_and_seeds_matter() -> None:
    a, _ = _train(5)
    b, _ = _train(5)
    c, _ = _train(6)
    pa, pb, pc = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_batchnorm_is_refused() -> None:
    x, y = _data()
    bn = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                             torch.nn.Linear(8, 3))
    with pytest.raises(ConfigError):
        private_local_training(bn, _ce, x, y, epochs=1, batch_size=16, lr=0.1,
                               noise_multiplier=1.0, max_grad_norm=1.0,
                               rng=KeystreamRNG.from_seed(0))


def test_empty_poisson_batches_take_noise_only_steps() -> None:
    x, y = _data()
    m = _model()
    rep = private_local_training(m, _ce, x[:40], y[:40], epochs=1, batch_size=1, lr=0.1,
                                 noise_multiplier=1.0, max_grad_norm=1.0,
                                 rng=KeystreamRNG.from_seed(3))
    assert rep.steps == 40  # q = 1/40: about 37% of the batches are empty


def test_sampler_draws_its_decisions_from_the_keystream() -> None:
    s = KeystreamPoissonSampler(num_samples=50, sample_rate=0.2, rng=KeystreamRNG.from_seed(7),
                                steps=3)
    batches = list(s)
    ref = KeystreamRNG.from_seed(7)
    expect = [np.flatnonzero(ref.bernoulli(0.2, 50)).tolist() for _ in range(3)]
    assert batches == expect and len(s) == 3


def test_optimizer_noise_comes_from_the_keystream() -> None:
    p = torch.nn.Parameter(torch.zeros(5))
    opt = KeystreamDPOptimizer(torch.optim.SGD([p], lr=1.0), keystream=KeystreamRNG.from_seed(9),
                               noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=1,
                               loss_reduction="sum")
    p.summed_grad = torch.zeros(5)  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.add_noise()
    ref = GaussianMechanism(1.0).sample(5, KeystreamRNG.from_seed(9))
    assert np.allclose(p.grad.numpy(), ref.astype(np.float32))


# -- the faster paths compute the same mechanism ----------------------------------------
def _cnn(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.GroupNorm(2, 4),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6), torch.nn.ReLU(),
        torch.nn.Linear(6, 3)).to(dtype)


def _per_sample_reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          clip: float) -> list[torch.Tensor]:
    """Sum over samples of each sample's own gradient, flat-clipped to ``clip`` (a loop)."""
    params = list(model.parameters())
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(_ce(model, x[i : i + 1], y[i : i + 1]), params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        c = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += c * g.double()
    return total


def _clipped_sums(gsm_cls: type, opt_cls: type, x: torch.Tensor, y: torch.Tensor, clip: float,
                  **kw: object) -> tuple[list[torch.Tensor], torch.nn.Module]:
    m = _cnn(dtype=x.dtype)
    gsm = gsm_cls(m, batch_first=True, loss_reduction="mean")
    gsm.forbid_grad_accumulation()  # as make_private does under Poisson sampling
    opt = opt_cls(torch.optim.SGD(m.parameters(), lr=0.1), noise_multiplier=0.0,
                  max_grad_norm=clip, expected_batch_size=len(x), **kw)
    _ce(m, x, y).backward()
    factored = [getattr(p, FACTORS, None) is not None for p in m.parameters()]
    opt.clip_and_accumulate()
    out = [p.summed_grad.detach().clone() for p in m.parameters()]
    gsm._close()
    return out, factored  # type: ignore[return-value]


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])  # all clipped, some, none
def test_factored_clipping_equals_opacus_and_a_per_sample_loop(clip: float) -> None:
    # float64 throughout: the unclipped sums cancel to entries near 1e-2, where float32
    # accumulation in a different order (thread count, load) differs by more than atol
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 1, 5, 5, generator=g), torch.randint(0, 3, (13,), generator=g)
    x = x.double()
    ours, factored = _clipped_sums(FactoredLinearGradSampleModule, KeystreamDPOptimizer, x, y,
                                   clip, keystream=KeystreamRNG.from_seed(0))
    # the two Linear layers (weight, bias) took the factored path, conv and GroupNorm did not
    assert factored == [False, False, False, True, True, True, True]
    opacus, _ = _clipped_sums(GradSampleModule, DPOptimizer, x, y, clip)
    ref = _per_sample_reference(_cnn(dtype=torch.float64), x, y, clip)
    for a, b, r in zip(ours, opacus, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert torch.allclose(a.double(), r, rtol=1e-5, atol=1e-7)
    norm = torch.sqrt(sum((a.double() ** 2).sum() for a in ours))
    assert float(norm) <= 13 * clip * (1 + 1e-5)  # each of the 13 samples adds at most C


def test_keystream_normals_are_the_rngs_own() -> None:
    for n in (1, 2, 7, 1000):
        a, b = KeystreamRNG.from_seed(4), KeystreamRNG.from_seed(4)
        ours = keystream_standard_normal(a, n).numpy()
        assert ours.shape == (n,)
        assert np.allclose(ours, b.standard_normal(n), rtol=1e-12, atol=1e-13)
        assert a.bytes(16) == b.bytes(16)  # same keystream words consumed


@pytest.mark.parametrize("hardened", [False, True])
def test_keystream_gaussian_is_the_gaussian_mechanism(hardened: bool) -> None:
    key = bytes(range(32))
    a = KeystreamRNG(key, hardened_mode=hardened)
    b = KeystreamRNG(key, hardened_mode=hardened)
    ours = GaussianMechanism(1.7).sample(999, a)
    # The construction written out on the reference sampler: one normal per coordinate,
    # or (hardened) the sum of four normals over two, Opacus's secure_mode.
    z = b.standard_normal(4 * 999).reshape(4, 999).sum(0) / 2.0 if hardened \
        else b.standard_normal(999)
    assert np.allclose(ours, 1.7 * z, rtol=1e-12, atol=1e-12)
    assert a.bytes(16) == b.bytes(16)  # same keystream words consumed
    assert np.array_equal(ours, keystream_gaussian(999, 1.7, KeystreamRNG(
        key, hardened_mode=hardened)).numpy())  # the release and DP-SGD share one sampler


@pytest.mark.parametrize("hardened", [False, True])
def test_optimizer_noise_std_and_one_draw_for_all_parameters(hardened: bool) -> None:
    shapes = [(300, 200), (7,), (3, 5, 2)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    key = bytes(range(1, 33))
    opt = KeystreamDPOptimizer(torch.optim.SGD(params, lr=1.0),
                               keystream=KeystreamRNG(key, hardened_mode=hardened),
                               noise_multiplier=1.5, max_grad_norm=0.8, expected_batch_size=1,
                               loss_reduction="sum")
    for p in params:
        p.summed_grad = torch.zeros_like(p)  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.add_noise()
    noise = torch.cat([p.grad.flatten() for p in params]).double().numpy()
    ref = keystream_gaussian(noise.size, 1.2, KeystreamRNG(key, hardened_mode=hardened))
    assert np.allclose(noise, ref.float().double().numpy(), rtol=0, atol=0)
    var, n = noise.var(), noise.size  # std = noise_multiplier * clip = 1.2
    assert abs(var - 1.44) < 3 * 1.44 * math.sqrt(2 / n)
    assert abs(noise.mean()) < 3 * 1.2 / math.sqrt(n)


def test_one_step_is_the_dpsgd_formula() -> None:
    """q = 1, one step: theta - lr * (sum of clipped per-sample gradients + noise) / n."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(24, 1, 5, 5, generator=g), torch.randint(0, 3, (24,), generator=g)
    before = _cnn()
    clipped = _per_sample_reference(before, x, y, 0.3)
    m = _cnn()
    rep = private_local_training(m, _ce, x, y, epochs=1, batch_size=24, lr=0.5,
                                 noise_multiplier=0.7, max_grad_norm=0.3,
                                 rng=KeystreamRNG.from_seed(8))
    assert (rep.steps, rep.sample_rate) == (1, 1.0) and math.isfinite(rep.last_epoch_loss)
    twin = KeystreamRNG.from_seed(8)
    assert twin.bernoulli(1.0, 24).all()  # the sampler's draw: everyone
    noise = torch.split(keystream_gaussian(sum(p.numel() for p in m.parameters()), 0.7 * 0.3,
                                           twin).float(), [p.numel() for p in m.parameters()])
    for p0, p1, c, z in zip(before.parameters(), m.parameters(), clipped, noise, strict=True):
        expect = p0.detach().double() - 0.5 * (c + z.double().view_as(c)) / 24
        assert torch.allclose(p1.detach().double(), expect, rtol=1e-5, atol=1e-6)


def test_poisson_rate_of_the_sampler() -> None:
    n, q, steps = 400, 0.05, 300
    s = KeystreamPoissonSampler(num_samples=n, sample_rate=q, rng=KeystreamRNG.hardened(),
                                steps=steps)
    sizes = np.array([idx.size for idx in s.index_batches()])
    assert sizes.size == steps
    se = math.sqrt(q * (1 - q) / (n * steps))
    assert abs(sizes.mean() / n - q) < 4 * se
    a = KeystreamPoissonSampler(num_samples=50, sample_rate=0.3, rng=KeystreamRNG.from_seed(1),
                                steps=4)
    b = KeystreamPoissonSampler(num_samples=50, sample_rate=0.3, rng=KeystreamRNG.from_seed(1),
                                steps=4)
    assert [i.tolist() for i in a.index_batches()] == list(b)


class _Shared(torch.nn.Module):
    """One Linear used twice in a forward pass: Opacus's own (accumulating) hook path."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_a_layer_used_twice_goes_through_opacus_and_matches_it() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 4, generator=g), torch.randint(0, 2, (9,), generator=g)
    sums = []
    for gsm_cls, opt_cls, kw in ((FactoredLinearGradSampleModule, KeystreamDPOptimizer,
                                  {"keystream": KeystreamRNG.from_seed(0)}),
                                 (GradSampleModule, DPOptimizer, {})):
        torch.manual_seed(0)
        m = _Shared()
        gsm = gsm_cls(m, batch_first=True, loss_reduction="mean")
        gsm.forbid_grad_accumulation()
        opt = opt_cls(torch.optim.SGD(m.parameters(), lr=0.1), noise_multiplier=0.0,
                      max_grad_norm=0.2, expected_batch_size=9, **kw)
        _ce(m, x, y).backward()
        assert getattr(m.lin.weight, FACTORS, None) is None
        opt.clip_and_accumulate()
        sums.append([p.summed_grad.clone() for p in m.parameters()])
        gsm._close()
    for a, b in zip(*sums, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
