"""Models (secure_fed/fl/models/): shapes, the features/classifier contract, Opacus support."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from secure_fed.errors import ConfigError
from secure_fed.fl.models import ResNet10GN, SmallCNN, build_model

CASES = [
    ("digits", 10, (1, 8, 8), SmallCNN, 64),
    ("mnist5k", 10, (1, 28, 28), SmallCNN, 64),
    ("mnist", 10, (1, 28, 28), SmallCNN, 64),
    ("cifar10", 10, (3, 32, 32), ResNet10GN, 256),
    ("cifar100", 100, (3, 32, 32), ResNet10GN, 256),
]


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """Small models run faster on one thread (see benchmarks/RESULTS.md); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(dataset: str, classes: int, shape: tuple[int, int, int], **kw: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(dataset, classes, shape, **kw)


@pytest.mark.parametrize(("dataset", "classes", "shape", "cls", "dim"), CASES)
def test_contract(
    dataset: str, classes: int, shape: tuple[int, int, int], cls: type, dim: int
) -> None:
    model = _model(dataset, classes, shape)
    assert isinstance(model, cls) and model.feature_dim == dim
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (dim, classes)
    x = torch.randn(2, *shape)
    feats = model.features(x)
    assert feats.shape == (2, dim)
    logits = model(x)
    assert logits.shape == (2, classes)
    assert torch.allclose(logits, model.classifier(feats), atol=1e-6)


@pytest.mark.parametrize(
    ("dataset", "shape", "dim"), [("digits", (1, 8, 8), 32), ("cifar10", (3, 32, 32), 128)]
)
def test_custom_feature_dim(dataset: str, shape: tuple[int, int, int], dim: int) -> None:
    model = _model(dataset, 10, shape, feature_dim=dim)
    assert model.feature_dim == dim and model.features(torch.randn(2, *shape)).shape == (2, dim)


@pytest.mark.parametrize(("dataset", "classes", "shape", "cls", "dim"), CASES[:1] + CASES[3:4])
def test_no_batchnorm_no_inplace(
    dataset: str, classes: int, shape: tuple[int, int, int], cls: type, dim: int
) -> None:
    model = _model(dataset, classes, shape)
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.parametrize(("dataset", "classes", "shape", "cls", "dim"), CASES[:1] + CASES[3:4])
def test_samples_independent_in_train_mode(
    dataset: str, classes: int, shape: tuple[int, int, int], cls: type, dim: int
) -> None:
    """No cross-sample normalization: a sample's output ignores the rest of its batch."""
    model = _model(dataset, classes, shape).train()
    x = torch.randn(6, *shape)
    assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)


def test_validator_catches_batchnorm_model() -> None:
    """The check above can fail: a BatchNorm model is reported."""
    bad = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert ModuleValidator.validate(bad, strict=False) != []


def _narrow_resnet() -> nn.Module:
    """ResNet10GN at 1/4 width: the same layer types as the default, 16x cheaper."""
    torch.manual_seed(0)
    return ResNet10GN(10, (3, 32, 32), feature_dim=32, base_width=8)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: _model("digits", 10, (1, 8, 8)), (1, 8, 8)),
        (lambda: _model("mnist", 10, (1, 28, 28)), (1, 28, 28)),
        (_narrow_resnet, (3, 32, 32)),
    ],
    ids=["smallcnn-8", "smallcnn-28", "resnet10gn-narrow"],
)
def test_grad_sample_matches_per_sample_loop(
    make: Callable[[], nn.Module], shape: tuple[int, int, int]
) -> None:
    """Opacus per-sample gradients equal gradients computed one sample at a time."""
    model = make()
    gsm = GradSampleModule(model, loss_reduction="sum")
    x = torch.randn(3, *shape)
    y = torch.tensor([0, 1, 2])
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    params = [p for p in model.parameters() if p.requires_grad]
    batched = [p.grad_sample.detach().clone() for p in params]
    assert all(g.shape == (3, *p.shape) for g, p in zip(batched, params, strict=True))
    gsm.zero_grad(set_to_none=True)
    for i in range(3):
        ref = torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum"),
            params,
        )
        for g_batch, g_ref in zip(batched, ref, strict=True):
            assert torch.allclose(g_batch[i], g_ref, atol=1e-4, rtol=1e-3)


def test_frozen_features_give_feature_gradient() -> None:
    """FedHPro step: gradient of the CE w.r.t. features of a frozen extractor."""
    model = _model("digits", 10, (1, 8, 8))
    with torch.no_grad():
        feats = model.features(torch.randn(4, 1, 8, 8))
    feats.requires_grad_(True)
    loss = nn.functional.cross_entropy(model.classifier(feats), torch.tensor([0, 1, 2, 3]))
    (grad,) = torch.autograd.grad(loss, feats)
    assert grad.shape == (4, 64) and float(grad.abs().sum()) > 0


def test_build_model_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="--dataset"):
        build_model("imagenet", 10, (3, 224, 224))
    with pytest.raises(ConfigError, match="--feature-dim"):
        build_model("digits", 10, (1, 8, 8), feature_dim=0)
    with pytest.raises(ConfigError):
        build_model("digits", 1, (1, 8, 8))
    with pytest.raises(ConfigError):
        build_model("digits", 10, (1, 2, 2))


def test_small_cnn_learns_digits() -> None:
    """Sanity: 3 epochs of Adam on the digits train split reach >= 90% test accuracy."""
    from secure_fed.fl.data import load_dataset

    data = load_dataset("digits")
    model = _model("digits", 10, data.input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(data.train_y.shape[0], generator=gen)
        for start in range(0, perm.shape[0], 64):
            idx = perm[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(data.test_x).argmax(1) == data.test_y).float().mean()
    assert float(accuracy) >= 0.9
