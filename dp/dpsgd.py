"""DP-SGD local training through Opacus with keystream randomness (client side).

:func:`private_local_training` runs ``PrivacyEngine.make_private`` with Poisson sampling
and flat clipping on a GroupNorm model. Opacus's own ``secure_mode`` needs torchcsprng,
which does not install on current Python, so instead of forking Opacus we subclass the
two places that draw randomness:

* :class:`KeystreamPoissonSampler` (a ``UniformWithReplacementSampler``): each sample
  joins a batch by a Bernoulli(q) decision from :class:`crypto.rng.KeystreamRNG`;
* :class:`KeystreamDPOptimizer` (a ``DPOptimizer``): ``add_noise`` draws its Gaussian
  noise through :class:`dp.mechanisms.GaussianMechanism` from the same kind of stream
  (in hardened mode, the sum-of-four-normals construction of Opacus's secure mode).

:class:`KeystreamPrivacyEngine` wires them in through ``make_private``'s own hooks
(``_prepare_optimizer``, ``_prepare_data_loader``). The model delta a client uploads is
post-processing of these steps; the ledger records one
:class:`dp.events.GaussianEvent` per client and round (:meth:`DPSGDReport.event`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader, wrap_collate_with_empty
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from crypto.rng import KeystreamRNG
from dp.errors import ConfigError
from dp.events import GaussianEvent
from dp.mechanisms import GaussianMechanism

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class KeystreamPoissonSampler(UniformWithReplacementSampler):
    """Poisson batches: every index joins with probability ``sample_rate`` (keystream)."""

    def __init__(self, *, num_samples: int, sample_rate: float, rng: KeystreamRNG,
                 steps: int | None = None) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.rng = rng

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self.rng.bernoulli(self.sample_rate, self.num_samples)
            yield np.flatnonzero(mask).tolist()


class KeystreamDPDataLoader(DPDataLoader):
    """Opacus's ``DPDataLoader`` (empty-batch collate) with a keystream Poisson sampler."""

    def __init__(self, dataset: Dataset, *, sample_rate: float, rng: KeystreamRNG,
                 collate_fn: Any = None) -> None:
        first = dataset[0]
        self.sample_rate = sample_rate
        self.distributed = False
        sampler = KeystreamPoissonSampler(
            num_samples=len(dataset), sample_rate=sample_rate, rng=rng  # type: ignore[arg-type]
        )
        DataLoader.__init__(
            self,
            dataset=dataset,
            batch_sampler=sampler,
            collate_fn=wrap_collate_with_empty(
                collate_fn=collate_fn or default_collate,
                sample_empty_shapes=[(0, *getattr(x, "shape", ())) for x in first],
                dtypes=[getattr(x, "dtype", type(x)) for x in first],
            ),
        )


class KeystreamDPOptimizer(DPOptimizer):
    """``DPOptimizer`` whose Gaussian noise comes from a :class:`KeystreamRNG`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, keystream: KeystreamRNG,
                 **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.keystream = keystream

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        mech = GaussianMechanism(std) if std > 0 else None
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = torch.zeros_like(p.summed_grad)
            if mech is not None:
                draw = mech.sample(p.summed_grad.numel(), self.keystream)
                noise = torch.from_numpy(draw).to(p.summed_grad).view_as(p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class KeystreamPrivacyEngine(PrivacyEngine):
    """``PrivacyEngine`` whose sampler and noise draw from one keystream (flat, Poisson)."""

    def __init__(self, rng: KeystreamRNG) -> None:
        super().__init__(accountant="rdp", secure_mode=False)
        self.keystream = rng

    def _prepare_optimizer(self, *, optimizer: torch.optim.Optimizer, noise_multiplier: float,
                           max_grad_norm: Any, expected_batch_size: int,
                           loss_reduction: str = "mean", distributed: bool = False,
                           clipping: str = "flat", noise_generator: Any = None,
                           grad_sample_mode: str = "hooks", **kwargs: Any) -> DPOptimizer:
        if distributed or clipping != "flat" or grad_sample_mode != "hooks":
            raise ConfigError("keystream DP-SGD supports flat clipping, hooks, one process")
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        return KeystreamDPOptimizer(
            optimizer, keystream=self.keystream, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
        )

    def _prepare_data_loader(self, data_loader: DataLoader, *, poisson_sampling: bool,
                             distributed: bool, batch_first: bool = True,
                             rand_on_empty: bool = False) -> DataLoader:
        if not poisson_sampling or distributed or not batch_first or rand_on_empty:
            raise ConfigError("keystream DP-SGD needs Poisson sampling in one process")
        return KeystreamDPDataLoader(data_loader.dataset, sample_rate=1 / len(data_loader),
                                     rng=self.keystream, collate_fn=data_loader.collate_fn)


@dataclass(frozen=True, slots=True)
class DPSGDReport:
    """What one client's local DP-SGD ran: steps, Poisson rate, noise multiplier, clip."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float

    def event(self, subject: str, round_index: int = -1) -> GaussianEvent:
        """The ledger event of this training (subject: the client id)."""
        return GaussianEvent(self.noise_multiplier, self.sample_rate, self.steps, "poisson",
                             "sample", subject, "dpsgd", round_index)


def _check_args(epochs: int, batch_size: int, lr: float, noise_multiplier: float,
                max_grad_norm: float, n: int) -> None:
    if epochs < 1 or batch_size < 1 or n < 1:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1, data; got {epochs}, "
                          f"{batch_size}, {n} samples")
    if not (lr > 0 and noise_multiplier > 0 and max_grad_norm > 0):
        raise ConfigError("lr, noise_multiplier and max_grad_norm must be > 0")


def _noise_only_step(model: torch.nn.Module) -> None:
    """An empty Poisson batch still takes a (noise-only) step, as Opacus does."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]


def private_local_training(
    model: torch.nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    rng: KeystreamRNG,
    momentum: float = 0.0,
) -> DPSGDReport:
    """Train ``model`` in place with DP-SGD on one client's (x, y) (client side).

    ``loss_fn(model, xb, yb)`` returns the batch *mean* of per-sample losses (each sample's
    loss may depend only on that sample: no BatchNorm; GroupNorm is fine). Poisson rate
    q = 1 / ceil(n / batch_size) (Opacus's choice), epochs / q steps, flat clipping to
    ``max_grad_norm``, noise std ``noise_multiplier * max_grad_norm`` from ``rng``.
    Opacus hooks are removed before returning.
    """
    _check_args(epochs, batch_size, lr, noise_multiplier, max_grad_norm, len(x))
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"model is not DP-SGD compatible (use GroupNorm): {errors[0]}")
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    engine = KeystreamPrivacyEngine(rng)
    gsm, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=True,
    )
    steps = 0
    try:
        model.train()
        for _ in range(epochs):
            for xb, yb in dp_loader:
                dp_opt.zero_grad(set_to_none=True)
                if len(xb) == 0:
                    _noise_only_step(model)
                else:
                    loss_fn(model, xb, yb).backward()
                dp_opt.step()
                steps += 1
    finally:
        gsm._close()
    return DPSGDReport(steps, float(dp_loader.sample_rate), noise_multiplier, max_grad_norm)
