"""DP-SGD through Opacus with keystream sampling and noise."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from crypto.rng import KeystreamRNG
from dp.dpsgd import (
    KeystreamDPOptimizer,
    KeystreamPoissonSampler,
    private_local_training,
)
from dp.errors import ConfigError
from dp.mechanisms import GaussianMechanism

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
