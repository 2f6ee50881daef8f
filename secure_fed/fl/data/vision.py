"""torchvision-backed datasets (MNIST, CIFAR-10, CIFAR-100) read from ``--data-root``.

Runs on the experiment harness (clients get their shards from it). Nothing is downloaded
unless the user opts in with ``--download``: a missing or corrupted file is a
:class:`~secure_fed.errors.ConfigError` that lists exactly which files to put where.

torchvision's CIFAR classes verify every batch file against a pinned MD5; MNIST only checks
that the raw IDX files exist. Tests that write tiny CIFAR batches pass their own
*subclass* of the torchvision class (with their own checksums) as ``dataset_cls``; the
default is always the stock class, and anything that is not a subclass of it is refused,
so users never get weaker checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, VisionDataset
from torchvision.datasets.utils import check_integrity

from secure_fed.errors import ConfigError

VISION_CLASSES: dict[str, type[VisionDataset]] = {
    "mnist": MNIST,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
}


@dataclass(frozen=True)
class RawSplit:
    """One split as stored on disk: uint8 images (N x C x H x W) and int64 labels (N)."""

    images: torch.Tensor
    labels: torch.Tensor


def load_vision(
    name: str,
    data_root: str | None,
    download: bool = False,
    dataset_cls: type[VisionDataset] | None = None,
) -> tuple[RawSplit, RawSplit]:
    """Read the train and test splits of ``name`` as uint8 NCHW tensors (pixel values 0..255).

    ``dataset_cls`` replaces the stock torchvision class; it must be a subclass of it.
    """
    cls = _dataset_class(name, dataset_cls)
    if data_root is None:
        raise ConfigError(
            f"dataset {name!r} is read from files: pass --data-root DIR "
            f"({_expected_layout(cls, '<DIR>')}), or add --download to fetch it into DIR"
        )
    root = os.fspath(data_root)
    if not download:
        _check_files(name, cls, root)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (OSError, RuntimeError, ValueError, AssertionError, KeyError, IndexError, TypeError, EOFError) as exc:
        # torchvision asserts on an IDX header it does not recognise (random or truncated bytes)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else f"{type(exc).__name__}: not a valid {name} file"
        raise ConfigError(
            f"dataset {name!r} could not be read from --data-root {root}: {why}. "
            f"Expected {_expected_layout(cls, root)}"
        ) from exc
    return _to_raw(train), _to_raw(test)


def _dataset_class(name: str, dataset_cls: type[VisionDataset] | None) -> type[VisionDataset]:
    """The stock class for ``name``, or the caller's subclass of it."""
    default = VISION_CLASSES[name]
    if dataset_cls is None:
        return default
    if not (isinstance(dataset_cls, type) and issubclass(dataset_cls, default)):
        raise ConfigError(
            f"dataset_cls for {name!r} must be a subclass of torchvision's {default.__name__}"
        )
    return dataset_cls


def required_files(cls: type[VisionDataset], root: str) -> list[tuple[str, str | None]]:
    """Every file torchvision will check for ``cls`` under ``root``: (path, md5 or None)."""
    if issubclass(cls, MNIST):
        raw = os.path.join(root, cls.__name__, "raw")
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        return [(os.path.join(raw, n), None) for n in names]
    if issubclass(cls, CIFAR10):
        folder = os.path.join(root, cls.base_folder)
        listed = [(os.path.join(folder, f), md5) for f, md5 in cls.train_list + cls.test_list]
        return listed + [(os.path.join(folder, cls.meta["filename"]), cls.meta["md5"])]
    raise ConfigError(f"no file layout known for {cls.__name__}")


def _check_files(name: str, cls: type[VisionDataset], root: str) -> None:
    """Raise a ConfigError naming each missing or corrupted file."""
    if issubclass(cls, MNIST) and _has_legacy_mnist(cls, root):
        return  # torchvision still reads its old processed/*.pt cache
    files = required_files(cls, root)
    missing = [path for path, _ in files if not os.path.isfile(path)]
    corrupt = [
        path
        for path, md5 in files
        if path not in missing and md5 is not None and not check_integrity(path, md5)
    ]
    if not missing and not corrupt:
        return
    parts = []
    if missing:
        parts.append("missing: " + ", ".join(missing))
    if corrupt:
        parts.append("failed the MD5 check (re-download them): " + ", ".join(corrupt))
    raise ConfigError(
        f"dataset {name!r} not found under --data-root {root}; {'; '.join(parts)}. "
        f"Expected {_expected_layout(cls, root)}; or add --download to let torchvision fetch it"
    )


def _has_legacy_mnist(cls: type[MNIST], root: str) -> bool:
    """True if torchvision's pre-0.10 ``processed/training.pt``/``test.pt`` cache exists."""
    processed = os.path.join(root, cls.__name__, "processed")
    return all(
        os.path.isfile(os.path.join(processed, f)) for f in (cls.training_file, cls.test_file)
    )


def _expected_layout(cls: type[VisionDataset], root: str) -> str:
    """One sentence telling the user which files to put where."""
    if issubclass(cls, MNIST):
        raw = os.path.join(root, cls.__name__, "raw")
        names = ", ".join(os.path.splitext(os.path.basename(u))[0] for u, _ in cls.resources)
        mirror = cls.mirrors[0] if cls.mirrors else "an MNIST mirror"
        return f"the uncompressed IDX files {names} in {raw}/ (gunzip the .gz files from {mirror})"
    if issubclass(cls, CIFAR10):
        folder = os.path.join(root, cls.base_folder)
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return (
            f"the files {', '.join(files)} in {folder}/ "
            f"(extract {cls.filename} from {cls.url} into {root})"
        )
    return f"the files of {cls.__name__} under {root}"


def _to_raw(ds: VisionDataset) -> RawSplit:
    """Pull the whole split out of a torchvision dataset as uint8 NCHW and int64 labels."""
    data = ds.data
    targets = ds.targets
    if isinstance(data, np.ndarray):  # CIFAR: N x H x W x C
        images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    else:  # MNIST: N x H x W tensor
        images = data.unsqueeze(1)
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    return RawSplit(images=images.contiguous(), labels=labels)
