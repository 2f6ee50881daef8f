"""The analytic attack on per-class uploads and its scoring (server side: public parameters
and one vector, pure numpy); the audit that replays a run around it is
:mod:`secure_fed.audit.inversion`.

The attack (server side, :func:`invert`) is analytic. For client samples i of class c with
features f_i >= 0 (every model here ends its feature extractor with a ReLU) and softmax
error e_i = softmax(W f_i + b) - onehot(c), a per-class upload holds the sums

    B_c = sum_i e_i  (cls_grad_b[c], C entries),   G_c = sum_i e_i f_i^T  (cls_grad_w[c], C x dim)

(each term scaled by its clipping factor under sample-level DP), and feat_grad[c] = W^T B_c.
Row c of G_c over entry c of B_c is a weighted class-mean feature,

    G_c[c] / B_c[c] = sum_i (1 - p_ic) f_i / sum_i (1 - p_ic),

exact for a class with one sample and close to the plain mean while the model is not yet
confident (the first round). The class count follows by projecting B_c on the error the
model makes at that mean, n_c ~ B_c . e(m_c) / |e(m_c)|^2, or, under sample-level DP, from
the count coordinate (count / (coordinate * release rate)). The label set is the classes
whose blocks are nonzero: the holder indicators without DP, else a chi-square energy test of
each class's blocks against the public noise level. Because this project uploads *sums*,
the reference implementation's count leak (feature-gradient norm over the bias-gradient
norm of per-class *means*, which is 1/n_c) is gone: on sums that ratio is 1 by construction.

Prototype uploads (the algorithms of :data:`secure_fed.audit.inversion.PROTOTYPE_UPLOADERS`:
``proto_sum`` + ``class_count``, GFPL adds ``feat_sq``; declared for ``--dp sample`` in
:mod:`secure_fed.privacy.release`) are attacked directly (:func:`invert_prototypes`): a
class's summed features over its count is its mean feature (exact without DP; under
``--dp sample`` the mean of the subsample's features clipped to ``--proto-clip``, GFPL's to
``--gfpl-clip`` and scaled to the unit ball, the count read from the count coordinate; under
``--dp client`` the counts are holder indicators, GFPL's n_c / n_k, so the recovered mean's
cosine is exact, its relative L2 is not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_fed.aggregation.layout import VectorLayout
from secure_fed.privacy.release import COUNT_BLOCK, PROTO_BLOCK

DETECTION_Z = 3.0
"""Standard deviations of the noise energy above which a class block counts as present."""


# -- the attack (server side: public parameters and one vector) ------------------------------
@dataclass(frozen=True)
class AttackerKnowledge:
    """What the attacker knows besides the attacked vector (all public to the server).

    ``weight``/``bias``: the broadcast classifier the clients used (C x dim, C); ``noise_std``:
    per-entry standard deviation of the DP noise in the attacked vector (input units; 0 without
    DP, ``share std * sqrt(uploads summed)`` for a sum of distributed shares).
    """

    weight: np.ndarray
    bias: np.ndarray
    dp: str
    count_coordinate: float
    release_rate: float
    noise_std: float


@dataclass(frozen=True)
class Inversion:
    """The attack's output for one vector: per-class estimates for the classes it sums.

    ``means`` (C x dim): recovered class-mean features (zero rows where undefined);
    ``counts`` (C): recovered class counts, summed over the vector's uploads; ``present`` (C):
    classes judged present; ``score`` (C): the presence statistic (noise standard deviations
    of block energy, or +inf/0 for exact indicators).
    """

    means: np.ndarray
    counts: np.ndarray
    present: np.ndarray
    score: np.ndarray


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def class_block_energy(layout: VectorLayout, vector: np.ndarray, c: int) -> tuple[float, int]:
    """Sum of squares and entry count of class ``c``'s blocks (feature, weight, bias,
    prototype, count)."""
    energy, entries = 0.0, 0
    for name in ("feat_grad", "cls_grad_w", "cls_grad_b", PROTO_BLOCK, COUNT_BLOCK):
        if name in layout.names():
            block = np.asarray(layout.view(vector, name)[c], dtype=np.float64)
            energy += float(np.sum(block * block))
            entries += block.size
    return energy, entries


def _presence(layout: VectorLayout, vector: np.ndarray, k: AttackerKnowledge, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Label set: exact holder indicators without DP, else an energy test against the noise."""
    if "holders" in layout.names():
        holders = np.asarray(layout.view(vector, "holders"), dtype=np.float64)
        present = holders > 0.5
        return present, np.where(present, np.inf, 0.0)
    score = np.zeros(num_classes)
    for c in range(num_classes):
        energy, d = class_block_energy(layout, vector, c)
        if k.noise_std > 0:
            var = k.noise_std ** 2
            score[c] = (energy - d * var) / (var * math.sqrt(2.0 * d))  # chi-square, d dof, in sds
        else:
            score[c] = np.inf if energy > 0 else 0.0
    return score > DETECTION_Z, score


def invert_prototypes(layout: VectorLayout, vector: np.ndarray, k: AttackerKnowledge) -> Inversion:
    """The attack on a prototype upload (``proto_sum`` + ``class_count``: FedProto,
    ProtoNorm, FedSA).

    The class mean is the summed features over the count: without DP the count block is
    exact; under sample-level DP the subsample's count is ``class_count / coordinate`` (the
    features are clipped to ``--proto-clip``, so only directions survive clipping) and the
    client's count that over the release rate; under client-level DP the sum is already
    divided by n_k and the count block holds holder indicators, so the mean's direction is
    the sum's. Noise may flip a count's sign: its magnitude is used, and a class whose count
    reads zero gets a zero mean.
    """
    sums = np.asarray(layout.view(vector, PROTO_BLOCK), dtype=np.float64)  # C x dim
    cnt = np.asarray(layout.view(vector, COUNT_BLOCK), dtype=np.float64)  # C
    present, score = _presence(layout, vector, k, sums.shape[0])
    summed = np.abs(cnt / k.count_coordinate) if k.dp == "sample" else np.abs(cnt)
    means = np.where(summed[:, None] > 0, sums / np.maximum(summed, 1e-300)[:, None], 0.0)
    counts = cnt / (k.count_coordinate * k.release_rate) if k.dp == "sample" else cnt
    return Inversion(means, np.where(present, np.maximum(counts, 1.0), 0.0), present, score)


def invert(layout: VectorLayout, vector: np.ndarray, k: AttackerKnowledge) -> Inversion:
    """The analytic attack on one upload or one sum of uploads (server side, pure numpy);
    a prototype upload goes to :func:`invert_prototypes`."""
    if "cls_grad_b" not in layout.names() and PROTO_BLOCK in layout.names():
        return invert_prototypes(layout, vector, k)
    w = np.asarray(k.weight, dtype=np.float64)
    b = np.asarray(k.bias, dtype=np.float64)
    num_classes, dim = w.shape
    # The weight block travels only with --classifier meta; without it nothing here gives
    # the class means (they stay zero) and only counts and the label set are attacked.
    g_w = (np.asarray(layout.view(vector, "cls_grad_w"), dtype=np.float64) if "cls_grad_w" in layout.names()
           else np.zeros((num_classes, num_classes, dim)))  # C x C x dim
    g_b = np.asarray(layout.view(vector, "cls_grad_b"), dtype=np.float64)  # C x C
    present, score = _presence(layout, vector, k, num_classes)
    means = np.zeros((num_classes, dim))
    counts = np.zeros(num_classes)
    for c in range(num_classes):
        num = np.maximum(-g_w[c, c], 0.0)  # features are >= 0 and 1 - p_ic > 0: -G_c[c] >= 0
        den = abs(float(g_b[c, c]))  # -B_c[c] > 0 without noise; noise may flip its sign
        if den > 0:
            means[c] = num / den
        err = _softmax(w @ means[c] + b)
        err[c] -= 1.0
        counts[c] = float(g_b[c] @ err / (err @ err))
    if k.dp == "sample" and "class_count" in layout.names():
        counts = np.asarray(layout.view(vector, "class_count"), dtype=np.float64) / (k.count_coordinate * k.release_rate)
    # A class judged present holds at least one sample.
    return Inversion(means, np.where(present, np.maximum(counts, 1.0), 0.0), present, score)


# -- scoring against the truth (harness side) ------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def rel_l2(est: np.ndarray, true: np.ndarray) -> float:
    return float(np.linalg.norm(est - true) / max(float(np.linalg.norm(true)), 1e-12))


@dataclass(frozen=True)
class Guess:
    """One view's guess for a client: class means, per-client counts and the label set."""

    means: np.ndarray
    counts: np.ndarray
    present: np.ndarray


def score_client(guess: Guess, true_means: np.ndarray, true_counts: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Per-class metrics of ``guess`` against one client's truth (classes it holds)."""
    held = np.flatnonzero(true_counts > 0)
    cos = [cosine(guess.means[c], true_means[c]) for c in held]
    rel = [rel_l2(guess.means[c], true_means[c]) for c in held]
    est = [int(round(float(guess.counts[c]))) for c in held]
    hits = [e == int(true_counts[c]) for e, c in zip(est, held, strict=True)]
    small = [h for h, c in zip(hits, held, strict=True) if true_counts[c] < batch_size]
    predicted = set(np.flatnonzero(guess.present).tolist())
    truth = set(held.tolist())
    tp = len(predicted & truth)
    return {
        "classes": held.tolist(), "true_counts": [int(true_counts[c]) for c in held],
        "cosine": cos, "rel_l2": rel, "count_estimates": [float(guess.counts[c]) for c in held],
        "count_hits": hits, "small_count_hits": small,
        "label_precision": tp / len(predicted) if predicted else 0.0,
        "label_recall": tp / len(truth) if truth else 1.0,
    }


def pool(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Means over every (client, class) pair and over clients."""
    def flat(key: str) -> list[float]:
        return [float(v) for r in rows for v in r[key]]

    def mean(xs: Sequence[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    cos = flat("cosine")
    return {
        "cosine_mean": mean(cos), "cosine_min": min(cos) if cos else None,
        "rel_l2_mean": mean(flat("rel_l2")),
        "count_hit_rate": mean(flat("count_hits")),
        "small_count_hit_rate": mean(flat("small_count_hits")),
        "label_precision": mean([r["label_precision"] for r in rows]),
        "label_recall": mean([r["label_recall"] for r in rows]),
        "pairs": len(cos),
    }
