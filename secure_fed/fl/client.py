"""Client-side building blocks shared by FedHPro and the baselines (runs on the client).

* :func:`local_train`: SGD epochs over the client's shard with cross-entropy plus an
  optional extra loss on the features (HPCL + HPAL for FedHPro, the prototype distance for
  FedProto).
* :func:`per_class_gradient_sums`: FedHPro's per-class gradients on frozen features, as
  *sums* over samples (DESIGN.md section 2), in closed form for the linear head.
* :func:`model_delta`: the flattened parameter change of local training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crypto.rng import KeystreamRNG
from dp.dpsgd import DPSGDReport, private_local_training
from secure_fed.config import TrainConfig
from secure_fed.privacy.upload import UploadSpec

FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""extra_loss(features (B x dim), labels (B)) -> scalar, added to the cross-entropy."""


@dataclass(frozen=True)
class ClientShard:
    """One client's local data, already on the compute device."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one detached vector (order of ``model.parameters()``)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat_params(model: nn.Module, vector: torch.Tensor) -> None:
    """Write a flat vector (as produced by :func:`flat_params`) into the parameters."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, model has {offset}")


def local_train(
    model: nn.Module,
    shard: ClientShard,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    generator: torch.Generator,
    extra_loss: FeatureLoss | None = None,
) -> float:
    """Train ``model`` in place on ``shard``; returns the mean training loss of the last epoch."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(shard.n, generator=generator).to(shard.x.device)
        total, batches = 0.0, 0
        for start in range(0, shard.n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = shard.x[idx], shard.y[idx]
            feats = model.features(xb)  # type: ignore[operator]
            loss = F.cross_entropy(model.classifier(feats), yb)  # type: ignore[operator]
            if extra_loss is not None:
                loss = loss + extra_loss(feats, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        last = total / max(batches, 1)
    return last


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])  # type: ignore[operator]


@torch.no_grad()
def per_class_gradient_sums(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sums over samples of the cross-entropy gradients of a linear head.

    For sample i with features f_i and error e_i = softmax(W f_i + b) - onehot(y_i):
    dL/df_i = W^T e_i (dim), dL/dW = e_i f_i^T (C x dim), dL/db = e_i (C). Returns the sums
    over the samples of each class: feature (C x dim), weight (C x C x dim), bias (C x C).
    Classes without samples are zero blocks.
    """
    num_classes = weight.shape[0]
    err = torch.softmax(features @ weight.T + bias, dim=1)
    onehot = F.one_hot(labels, num_classes).to(features.dtype)
    err = err - onehot
    feat = onehot.T @ (err @ weight)
    wgrad = torch.einsum("bc,bk,bd->ckd", onehot, err, features)
    bgrad = onehot.T @ err
    return feat, wgrad, bgrad


@torch.no_grad()
def class_mean_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature of each class the client holds (K x dim, K = classes present)."""
    onehot = F.one_hot(labels, num_classes).to(features.dtype)
    counts = onehot.sum(0)
    present = counts > 0
    sums = onehot.T @ features
    return sums[present] / counts[present, None]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float, torch.Tensor]:
    """Accuracy, mean cross-entropy and the per-sample correctness vector on (x, y)."""
    model.eval()
    correct, loss = [], 0.0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct.append(logits.argmax(1) == yb)
    hits = torch.cat(correct)
    return float(hits.float().mean()), loss / x.shape[0], hits


def personalized_accuracy(hits: torch.Tensor, test_y: torch.Tensor, train_y: torch.Tensor, num_classes: int) -> float:
    """Accuracy on the test set reweighted to the client's own label distribution."""
    w = torch.bincount(train_y, minlength=num_classes).to(torch.float64)
    w = w / w.sum()
    per_class = torch.zeros(num_classes, dtype=torch.float64, device=hits.device)
    cnt = torch.bincount(test_y, minlength=num_classes).to(torch.float64)
    per_class.index_add_(0, test_y, hits.to(torch.float64))
    acc = torch.where(cnt > 0, per_class / cnt.clamp_min(1), torch.zeros_like(cnt))
    return float((acc * w.to(acc.device)).sum())


@dataclass(frozen=True)
class ClientContext:
    """What a client knows in a round besides the broadcast: public settings and its own
    randomness (``generator`` for data shuffling, ``rng`` for DP sampling and noise)."""

    cfg: TrainConfig
    spec: UploadSpec
    num_classes: int
    generator: torch.Generator
    rng: KeystreamRNG
    noise_multiplier: float = 0.0


@dataclass
class ClientOutput:
    """A client's named upload blocks, its training loss and its DP-SGD report (if any)."""

    blocks: dict[str, np.ndarray]
    loss: float
    sgd: DPSGDReport | None = None


def train_locally(model: nn.Module, shard: ClientShard, ctx: ClientContext, extra: FeatureLoss | None) -> tuple[float, DPSGDReport | None]:
    """Local training: plain SGD, or DP-SGD through Opacus under sample-level DP."""
    cfg = ctx.cfg
    if ctx.spec.dp != "sample":
        loss = local_train(model, shard, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                           momentum=cfg.momentum, generator=ctx.generator, extra_loss=extra)
        return loss, None

    def loss_fn(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        f = m.features(xb)  # type: ignore[operator]
        out = F.cross_entropy(m.classifier(f), yb)  # type: ignore[operator]
        return out + extra(f, yb) if extra is not None else out

    model.train()
    report = private_local_training(
        model, loss_fn, shard.x, shard.y, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        noise_multiplier=ctx.noise_multiplier, max_grad_norm=ctx.spec.clip, rng=ctx.rng, momentum=cfg.momentum,
    )
    # The mean batch loss of the last epoch, as local_train reports it (a local diagnostic:
    # no extra pass over the shard unless every Poisson batch of that epoch was empty).
    loss = report.last_epoch_loss
    if not math.isfinite(loss):
        with torch.no_grad():
            model.eval()
            loss = float(loss_fn(model, shard.x, shard.y))
    return loss, report


def weighted_delta(delta: np.ndarray, n: int, spec: UploadSpec) -> dict[str, np.ndarray]:
    """The delta blocks: n_k * delta and n_k without DP, the bare delta under DP (uniform
    weights: an exact n_k must not reach the server)."""
    if spec.weighted:
        return {"delta": n * delta, "n": np.array([float(n)])}
    return {"delta": delta}
