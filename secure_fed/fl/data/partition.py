"""Seeded splits of a labelled dataset among simulated clients.

Runs on the experiment harness, before training: it decides which sample indices each
simulated client holds. Splitting data is not a secret, so numpy's seeded generator
(``numpy.random.default_rng(seed)``) is the right tool here; the same seed always gives the
same partition. Noise and secrets never come from here (see ``crypto.rng``).

* :func:`iid_partition`: a random permutation cut into near-equal shards.
* :func:`dirichlet_partition`: label skew. For each class, client shares are drawn from
  Dirichlet(alpha); small alpha means each client sees few classes. Resampled until every
  client holds at least ``min_size`` samples.
* :func:`long_tail`: class imbalance with an exponential profile (ratio ``rho``).
* :func:`make_partition`: the one entry point (optional long tail, then a scheme).

The returned histograms are the experimenter's record: they are exact per-client label
counts and must never be sent to the server in a DP run.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from secure_fed.errors import ConfigError

SCHEMES = ("iid", "dirichlet")
MAX_DIRICHLET_ATTEMPTS = 1000

IndexArray = NDArray[np.int64]


def _as_labels(labels: ArrayLike) -> NDArray[np.int64]:
    """Labels as a 1-D int64 array of non-negative class indices."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ConfigError("labels must be non-negative class indices")
    return arr.astype(np.int64, copy=False)


def _check_clients(num_clients: int, num_samples: int) -> None:
    """``--clients`` must be >= 1 and at most the number of samples."""
    if (
        not isinstance(num_clients, (int, np.integer))
        or isinstance(num_clients, bool)
        or num_clients < 1
    ):
        raise ConfigError(f"--clients must be a positive integer, got {num_clients!r}")
    if num_clients > num_samples:
        raise ConfigError(
            f"--clients {num_clients} exceeds the {num_samples} samples available; "
            "use fewer clients (or a larger dataset / smaller --imbalance)"
        )


def _is_real(value: object) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")


def iid_partition(labels: ArrayLike, num_clients: int, seed: int) -> list[IndexArray]:
    """Shuffle all indices and cut them into ``num_clients`` shards (sizes differ by <= 1)."""
    y = _as_labels(labels)
    _check_clients(num_clients, y.size)
    _check_seed(seed)
    perm = np.random.default_rng(seed).permutation(y.size)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, int(num_clients))]


def dirichlet_partition(
    labels: ArrayLike,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 2,
    max_attempts: int = MAX_DIRICHLET_ATTEMPTS,
) -> list[IndexArray]:
    """Label-skewed split: class c is divided among clients in Dirichlet(alpha) proportions.

    Follows the common NIID-Bench recipe (Li et al., ICDE'22): a client that already holds
    its fair share (N / K samples) gets no further share of later classes, which limits
    quantity skew. The whole draw repeats until every client holds >= ``min_size`` samples;
    after ``max_attempts`` draws it gives up with a ConfigError.
    """
    y = _as_labels(labels)
    _check_clients(num_clients, y.size)
    _check_seed(seed)
    if not (_is_real(alpha) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"--alpha must be a finite number > 0, got {alpha!r}")
    if min_size < 0 or min_size * num_clients > y.size:
        raise ConfigError(
            f"min_size {min_size} x --clients {num_clients} exceeds the {y.size} samples; "
            "use fewer clients"
        )
    rng = np.random.default_rng(seed)
    for _ in range(max_attempts):
        parts = _dirichlet_draw(y, int(num_clients), float(alpha), rng)
        if min(p.size for p in parts) >= min_size:
            return parts
    raise ConfigError(
        f"could not give all {num_clients} clients >= {min_size} samples with --alpha {alpha} "
        f"in {max_attempts} draws; use a larger --alpha or fewer --clients"
    )


def _dirichlet_draw(
    y: NDArray[np.int64], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    """One Dirichlet draw over all classes (no min-size check)."""
    fair_share = y.size / num_clients
    buckets: list[list[NDArray[np.int64]]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        props = rng.dirichlet(np.full(num_clients, alpha))
        props = props * (sizes < fair_share)
        props = props / props.sum()
        cuts = (np.cumsum(props) * idx.size).astype(np.int64)[:-1]
        for k, chunk in enumerate(np.split(idx, cuts)):
            buckets[k].append(chunk)
            sizes[k] += chunk.size
    return [np.sort(np.concatenate(b)).astype(np.int64) for b in buckets]


def long_tail_counts(class_counts: ArrayLike, rho: float) -> NDArray[np.int64]:
    """Samples kept per class under the exponential long-tail profile.

    Class c keeps ``min(n_c, max(1, floor(n_max * rho ** (-c / (C - 1)))))`` samples, with
    n_max the largest class count, so class 0 keeps the most and class C-1 about
    n_max / rho. Absent classes stay at 0. ``rho = 1`` keeps everything.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if not (_is_real(rho) and math.isfinite(rho) and rho >= 1):
        raise ConfigError(
            f"--imbalance (long-tail ratio rho) must be a finite number >= 1, got {rho!r}"
        )
    num_classes = counts.size
    if num_classes <= 1 or rho == 1:
        return counts.copy()
    n_max = int(counts.max())
    exponents = -np.arange(num_classes) / (num_classes - 1)
    targets = np.floor(n_max * np.power(float(rho), exponents) + 1e-9).astype(np.int64)
    return np.where(counts > 0, np.minimum(counts, np.maximum(targets, 1)), 0)


def long_tail(labels: ArrayLike, rho: float, seed: int) -> IndexArray:
    """Indices (sorted) of a long-tailed subset of ``labels``; see :func:`long_tail_counts`.

    Which samples of a class are kept is a seeded uniform choice.
    """
    y = _as_labels(labels)
    _check_seed(seed)
    counts = np.bincount(y) if y.size else np.zeros(0, dtype=np.int64)
    keep = long_tail_counts(counts, rho)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(k), replace=False)
        for c, k in enumerate(keep)
        if k > 0
    ]
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def make_partition(
    labels: ArrayLike,
    num_clients: int,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    imbalance: float = 1.0,
    seed: int = 0,
    min_size: int = 2,
) -> list[IndexArray]:
    """Split ``labels`` among ``num_clients``: optional long tail, then ``iid``/``dirichlet``.

    Returns one sorted int64 array of indices into ``labels`` per client; the arrays are
    disjoint. ``imbalance`` is the long-tail ratio rho (1 = no long tail); ``alpha`` is used
    by ``dirichlet`` only. The long tail is seeded with ``seed``, the split with ``seed + 1``.
    """
    y = _as_labels(labels)
    if scheme not in SCHEMES:
        raise ConfigError(f"--partition {scheme!r} is unknown; choose one of {', '.join(SCHEMES)}")
    _check_seed(seed)
    kept = long_tail(y, imbalance, seed) if imbalance != 1 else np.arange(y.size, dtype=np.int64)
    if scheme == "iid":
        local = iid_partition(y[kept], num_clients, seed + 1)
    else:
        local = dirichlet_partition(y[kept], num_clients, alpha, seed + 1, min_size)
    return [kept[part] for part in local]


def class_histogram(
    parts: list[IndexArray], labels: ArrayLike, num_classes: int
) -> NDArray[np.int64]:
    """Per-client label counts: a K x C int64 matrix (row k = client k)."""
    y = _as_labels(labels)
    if y.size and int(y.max()) >= num_classes:
        raise ConfigError(f"labels go up to {int(y.max())} but num_classes is {num_classes}")
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, part in enumerate(parts):
        hist[k] = np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return hist


def histogram_to_json(hist: NDArray[np.integer[Any]]) -> dict[str, Any]:
    """A JSON-ready summary of a K x C histogram (plain ints, for ``config.json``/reports)."""
    h = np.asarray(hist, dtype=np.int64)
    if h.ndim != 2:
        raise ConfigError(f"histogram must be K x C, got shape {h.shape}")
    return {
        "num_clients": int(h.shape[0]),
        "num_classes": int(h.shape[1]),
        "client_sizes": [int(v) for v in h.sum(axis=1)],
        "class_totals": [int(v) for v in h.sum(axis=0)],
        "classes_per_client": [int(v) for v in (h > 0).sum(axis=1)],
        "counts": [[int(v) for v in row] for row in h],
    }
