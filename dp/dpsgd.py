"""DP-SGD local training through Opacus with keystream randomness (client side).

:func:`private_local_training` runs ``PrivacyEngine.make_private`` with Poisson sampling
and flat clipping on a GroupNorm model. Opacus's own ``secure_mode`` needs torchcsprng,
which does not install on current Python, so instead of forking Opacus we subclass the
two places that draw randomness:

* :class:`KeystreamPoissonSampler` (a ``UniformWithReplacementSampler``): each sample
  joins a batch by a Bernoulli(q) decision from :class:`crypto.rng.KeystreamRNG`;
* :class:`KeystreamDPOptimizer` (a ``DPOptimizer``): ``add_noise`` draws its Gaussian
  noise from the same kind of stream, with the sampler of
  :class:`dp.mechanisms.GaussianMechanism` (Box-Muller on 53-bit keystream uniforms; in
  hardened mode the sum-of-four-normals construction of Opacus's secure mode), once per
  step for all parameters (:func:`dp.normal.keystream_gaussian`).

:class:`KeystreamPrivacyEngine` wires them in through ``make_private``'s own hooks
(``_prepare_model``, ``_prepare_optimizer``, ``_prepare_data_loader``). The model delta a
client uploads is post-processing of these steps; the ledger records one
:class:`dp.events.GaussianEvent` per client and round (:meth:`DPSGDReport.event`).

Speed. The mechanism is Opacus's: Poisson sampling, per-sample gradients from its grad
samplers, flat clipping to C with its clip factor, noise std ``noise_multiplier * C``.
What costs less here than with a stock ``GradSampleModule`` + ``DPOptimizer`` on a small
CNN, each computing the same quantities (tests compare them with stock Opacus and with a
per-sample autograd loop):

* noise: one draw per step for every parameter (not one per parameter tensor), from
  :mod:`dp.normal` (the release noise's own sampler);
* Linear layers on (batch x features) inputs keep their per-sample gradients as two
  factors, never as B x out x in tensors (:class:`FactoredLinearGradSampleModule`);
* hooks: a forward hook plus a tensor hook on each layer's output instead of Opacus's
  full backward hooks, whose per-forward autograd wrappers cost more than the forward
  pass of a small CNN; per-sample gradients stored without Opacus's padding copy;
* clipping: the clipped sum ``sum_i c_i g_i`` as one matrix product per parameter;
* batches: the Poisson index sets index the client's tensors directly instead of going
  through ``DataLoader``'s per-sample ``__getitem__`` and collate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader, wrap_collate_with_empty
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import prepare_layer
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.module_utils import trainable_parameters
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from crypto.rng import KeystreamRNG
from dp.errors import ConfigError
from dp.events import GaussianEvent
from dp.normal import keystream_gaussian

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class KeystreamPoissonSampler(UniformWithReplacementSampler):
    """Poisson batches: every index joins with probability ``sample_rate`` (keystream)."""

    def __init__(self, *, num_samples: int, sample_rate: float, rng: KeystreamRNG,
                 steps: int | None = None) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.rng = rng

    def index_batches(self) -> Iterator[np.ndarray]:
        """The batches as index arrays (the same draws as iterating the sampler)."""
        for _ in range(self.steps):
            yield np.flatnonzero(self.rng.bernoulli(self.sample_rate, self.num_samples))

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.index_batches():
            yield idx.tolist()


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


FACTORS = "grad_sample_factors"  # parameter attribute: (A, G) of a factored Linear layer


class FactoredLinearGradSampleModule(GradSampleModule):
    """Opacus's hooks ``GradSampleModule``, with ``nn.Linear`` on (batch x features) inputs
    kept in factored form.

    For such a layer the per-sample gradient of sample i is the outer product
    ``g_i a_i^T`` (weight) and ``g_i`` (bias), with a_i the layer's input and g_i the
    backprop at its output (scaled by the batch size for a mean loss, as Opacus does).
    Opacus materializes them as a B x out x in tensor; here the parameter gets
    ``grad_sample_factors = (A, G)`` (B x in, B x out) instead, from which
    :class:`KeystreamDPOptimizer` computes the same flat clipping exactly:
    ``||g_i a_i^T||_F = ||g_i|| ||a_i||`` and ``sum_i c_i g_i a_i^T = (c * G)^T A``.
    Every other layer (convolutions, GroupNorm, Linear on sequences) goes through Opacus's
    own grad samplers unchanged (their output is stored as is, without Opacus's
    zero-filled copy, when nothing needs accumulating).

    Hooks: Opacus registers a forward hook (activations) and a *full* backward hook per
    layer; the full backward hook wraps the layer's inputs and outputs in extra autograd
    functions at every forward, which cost more than the whole forward pass of this small
    CNN. Here the forward hook records the activations as Opacus does and registers a
    tensor hook on the layer's output, which autograd calls with the same gradient (the
    backprop at the output) that the full backward hook receives; the per-sample work is
    Opacus's ``capture_backprops_hook``. A layer whose output is not a tensor is refused.
    """

    def add_hooks(self, *, loss_reduction: str = "mean", batch_first: bool = True,
                  force_functorch: bool = False) -> None:
        if hasattr(self._module, "autograd_grad_sample_hooks"):
            raise ValueError("Trying to add hooks twice to the same model")
        hooks: list[Any] = []
        self._module.autograd_grad_sample_hooks = hooks
        self.autograd_grad_sample_hooks = hooks
        backprops = partial(self.capture_backprops_hook, loss_reduction=loss_reduction,
                            batch_first=batch_first)
        for module in self.iterate_submodules(self._module):
            if force_functorch or type(module) not in self.GRAD_SAMPLERS:
                prepare_layer(module, batch_first=batch_first)
            hooks.append(module.register_forward_hook(
                partial(self._forward_hook, backprops=backprops)))
        self.enable_hooks()

    def _forward_hook(self, module: torch.nn.Module, forward_input: Any, output: Any,
                      backprops: Callable[..., None]) -> None:
        before = len(getattr(module, "activations", ()))
        self.capture_activations_hook(module, forward_input, output)
        if len(getattr(module, "activations", ())) == before:
            return  # not captured (eval mode, no grad, hooks disabled): no backprops either
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"keystream DP-SGD needs tensor outputs, {type(module).__name__} "
                              "returns something else")
        output.register_hook(lambda grad: backprops(module, None, (grad,)))

    def capture_backprops_hook(self, module: torch.nn.Module, _forward_input: Any,
                               forward_output: Any, loss_reduction: str,
                               batch_first: bool) -> None:
        """Per-sample gradients of one layer from its backprops (Opacus's samplers).

        The common case (a layer used once in the forward pass, Poisson batches: no
        accumulation) stores them directly, factored for 2-D Linear layers; anything else
        (shared layers, accumulation, functorch layers) is Opacus's own hook.
        """
        acts = getattr(module, "activations", None)
        params = [p for _, p in trainable_parameters(module)]
        if (not self.hooks_enabled or self.force_functorch or self.grad_accumulation_allowed
                or type(module) not in self.GRAD_SAMPLERS or acts is None or len(acts) != 1
                or any(p._forward_counter != 1 or hasattr(p, "_current_grad_sample")
                       for p in params)):
            super().capture_backprops_hook(module, _forward_input, forward_output,
                                           loss_reduction, batch_first)
            return
        factored = type(module) is torch.nn.Linear and acts[0][0].dim() == 2
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=forward_output[0].detach(),
            loss_reduction=loss_reduction, batch_first=batch_first,
        )
        if factored:
            a, g = activations[0], backprops
            samples: dict[Any, Any] = {module.weight: (a, g)}
            if module.bias is not None:
                samples[module.bias] = (None, g)
        else:
            samples = self.GRAD_SAMPLERS[type(module)](module, activations, backprops)
        for p in params:
            p._forward_counter -= 1  # Opacus's bookkeeping
            if getattr(p, FACTORS, None) is not None or p.grad_sample is not None:
                raise ValueError("Poisson sampling is not compatible with grad accumulation")
            if factored:
                setattr(p, FACTORS, samples[p])
            else:
                p.grad_sample = samples[p]  # B x shape: Opacus's tensor, without its padding copy
        if hasattr(module, "max_batch_len"):
            del module.max_batch_len

    def cleanup(self) -> None:
        super().cleanup()
        for p in self._module.parameters():
            if hasattr(p, FACTORS):
                delattr(p, FACTORS)


class KeystreamDPOptimizer(DPOptimizer):
    """``DPOptimizer`` whose Gaussian noise comes from a :class:`KeystreamRNG`.

    Clipping and noise are Opacus's (flat clipping with its clip factor
    ``min(1, C / (||g_i|| + 1e-6))``, noise std ``noise_multiplier * C``); they are computed
    with fewer, larger tensor operations (see the module docstring).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, keystream: KeystreamRNG,
                 **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.keystream = keystream

    @property
    def accumulated_iterations(self) -> int:
        # Poisson sampling forbids accumulation (the hooks raise): one batch per step.
        return 1

    def _per_sample(self) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Per parameter: (G or the B x numel per-sample gradients, A or None, p) forms."""
        out: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        for p in self.params:
            f = getattr(p, FACTORS, None)
            if f is not None:
                a, g = f
                out.append((g.to(p.dtype), None if a is None else a.to(p.dtype), None))
            else:
                gs = self._get_flat_grad_sample(p).to(p.dtype)
                out.append((gs.reshape(len(gs), p.numel()), None, gs))
        return out

    def clip_factors(self, forms: list[tuple[torch.Tensor, torch.Tensor | None,
                                             torch.Tensor | None]]) -> torch.Tensor:
        """Opacus's flat clip factors ``min(1, C / (||g_i|| + 1e-6))`` per sample."""
        if len(forms[0][0]) == 0:
            return torch.zeros((0,), device=forms[0][0].device)
        norms = []
        for rows, a, _ in forms:
            n = rows.norm(2, dim=-1)
            norms.append(n if a is None else n * a.norm(2, dim=-1))
        total = torch.stack(norms, dim=1).norm(2, dim=1)
        return (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0)

    def clip_and_accumulate(self) -> None:
        forms = self._per_sample()
        factors = self.clip_factors(forms)
        for p, (rows, a, raw) in zip(self.params, forms, strict=True):
            if raw is not None:
                _check_processed_flag(p.grad_sample)
            c = factors.to(rows)
            grad = (c @ rows if a is None else (rows * c[:, None]).T @ a).view(p.shape)
            if p.summed_grad is not None:
                p.summed_grad += grad
            else:
                p.summed_grad = grad
            if raw is not None:
                _mark_as_processed(p.grad_sample)
            else:
                setattr(p, FACTORS, None)

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Opacus's ``pre_step`` for factored and materialized per-sample gradients."""
        if not self.params:
            return True
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        super().zero_grad(set_to_none)
        for p in self.params:
            if getattr(p, FACTORS, None) is not None:
                setattr(p, FACTORS, None)

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        summed = [p.summed_grad for p in self.params]
        for g in summed:
            _check_processed_flag(g)
        sizes = [g.numel() for g in summed]
        if std > 0:
            flat = keystream_gaussian(sum(sizes), std, self.keystream)
            noises = torch.split(flat, sizes)
        else:
            noises = tuple(torch.zeros(n, dtype=torch.float64) for n in sizes)
        for p, g, z in zip(self.params, summed, noises, strict=True):
            p.grad = (g + z.to(g).view_as(g)).view_as(p)
            _mark_as_processed(g)


class KeystreamPrivacyEngine(PrivacyEngine):
    """``PrivacyEngine`` whose sampler and noise draw from one keystream (flat, Poisson)."""

    def __init__(self, rng: KeystreamRNG) -> None:
        with warnings.catch_warnings():
            # Opacus warns that secure_mode=False leaves its Poisson sampling and noise on
            # torch's non-cryptographic generator. That does not apply here: this engine's
            # sampler and optimizer never touch torch's generator; both draw from ``rng``, an
            # AES-CTR keystream (keyed from the OS CSPRNG in hardened mode). secure_mode=True
            # would only make Opacus import torchcsprng for a generator nothing here uses.
            warnings.filterwarnings("ignore", message=r"Secure RNG turned off\.", category=UserWarning,
                                    module=r"opacus\.privacy_engine\Z")
            super().__init__(accountant="rdp", secure_mode=False)
        self.keystream = rng

    def _prepare_model(self, module: torch.nn.Module, *, batch_first: bool = True,
                       max_grad_norm: Any = 1.0, loss_reduction: str = "mean",
                       grad_sample_mode: str = "hooks", wrap_model: bool = True
                       ) -> GradSampleModule:
        if grad_sample_mode != "hooks" or not wrap_model or isinstance(module, GradSampleModule):
            raise ConfigError("keystream DP-SGD wraps a plain module with Opacus's hooks")
        self.validate(module=module, optimizer=None, data_loader=None)
        return FactoredLinearGradSampleModule(module, batch_first=batch_first,
                                              loss_reduction=loss_reduction)

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
    """What one client's local DP-SGD ran: steps, Poisson rate, noise multiplier, clip.

    ``last_epoch_loss``: mean of the batch losses of the last epoch's non-empty batches
    (nan if all were empty); a local diagnostic, never part of an upload.
    """

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    last_epoch_loss: float = math.nan

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
    Opacus hooks are removed before returning. ``x`` and ``y`` are indexed per batch (on
    their own device).
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
    sampler = dp_loader.batch_sampler
    if not isinstance(sampler, KeystreamPoissonSampler):  # pragma: no cover - engine invariant
        raise ConfigError("keystream DP-SGD expects its own Poisson sampler")
    steps, loss_sum, batches = 0, None, 0
    try:
        model.train()
        for _ in range(epochs):
            loss_sum, batches = None, 0  # the report keeps the last epoch's mean batch loss
            # Index the tensors with each Poisson batch: what DPDataLoader's collate of
            # dataset[i] would stack, without a Python call per sample.
            for idx in sampler.index_batches():
                dp_opt.zero_grad(set_to_none=True)
                if idx.size == 0:
                    _noise_only_step(model)
                else:
                    sel = torch.from_numpy(idx).to(x.device)
                    loss = loss_fn(model, x[sel], y[sel])
                    loss.backward()
                    loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                    batches += 1  # summed on the device: no host sync per step
                dp_opt.step()
                steps += 1
    finally:
        gsm._close()
    last = float(loss_sum) / batches if loss_sum is not None else math.nan
    return DPSGDReport(steps, float(dp_loader.sample_rate), noise_multiplier, max_grad_norm, last)
