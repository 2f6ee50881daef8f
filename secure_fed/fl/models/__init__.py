"""Models for secure_fed: each exposes ``features``, ``classifier`` and ``feature_dim``.

``build_model`` picks the architecture for a dataset name:

* ``digits``, ``mnist5k``, ``mnist`` -> :class:`SmallCNN`, ``feature_dim`` 64 by default.
  Why 64: every client uploads per-class feature gradients (C x dim) and classifier
  gradients (C x (C*dim + C)) through SecAgg every round, so the upload, the masking work
  and (under DP) the total noise grow linearly with dim: with C = 10 these blocks are
  7,140 values at dim 64 against 28,260 at dim 256. The model delta shrinks too (the
  512 -> dim projection is 32.8k weights at 64, 131k at 256). 8 x 8 digits have only 64
  pixels, and 64 features suffice: 3 epochs reach 98% test accuracy on digits and 94% on
  mnist5k (benchmarks/RESULTS.md).
* ``cifar10``, ``cifar100`` -> :class:`ResNet10GN`, ``feature_dim`` 256 by default.
"""

from __future__ import annotations

from torch import nn

from secure_fed.errors import ConfigError
from secure_fed.fl.models.cnn import SmallCNN
from secure_fed.fl.models.resnet import ResNet10GN

SMALL_CNN_DATASETS = ("digits", "mnist5k", "mnist")
RESNET_DATASETS = ("cifar10", "cifar100")
DEFAULT_FEATURE_DIM = {"smallcnn": 64, "resnet10gn": 256}


def build_model(
    dataset: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    feature_dim: int | None = None,
) -> nn.Module:
    """The model for ``dataset``; ``feature_dim`` None picks the default (64 or 256)."""
    if feature_dim is not None and (not isinstance(feature_dim, int) or feature_dim < 1):
        raise ConfigError(f"--feature-dim must be a positive integer, got {feature_dim!r}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ConfigError(f"input_shape must be (C, H, W), got {input_shape!r}")
    c, h, w = shape
    if dataset in SMALL_CNN_DATASETS:
        if min(h, w) < 4:
            raise ConfigError(f"SmallCNN needs images of at least 4 x 4, got {h} x {w}")
        dim = feature_dim or DEFAULT_FEATURE_DIM["smallcnn"]
        return SmallCNN(num_classes, (c, h, w), feature_dim=dim)
    if dataset in RESNET_DATASETS:
        dim = feature_dim or DEFAULT_FEATURE_DIM["resnet10gn"]
        return ResNet10GN(num_classes, (c, h, w), feature_dim=dim)
    choices = ", ".join(SMALL_CNN_DATASETS + RESNET_DATASETS)
    raise ConfigError(f"--dataset {dataset!r} has no model; choose one of {choices}")


__all__ = ["ResNet10GN", "SmallCNN", "build_model"]
