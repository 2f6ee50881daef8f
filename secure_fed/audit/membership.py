"""Membership inference on the final global model of a finished run (auditor side).

Who is a member. The clients' training samples, rebuilt from the run's config exactly as
the trainer split them (same dataset split, partition and seed; checked against
``partition.json``), restricted to clients whose upload was summed in at least one round
(``audit.jsonl``). Non-members: held-out samples the model never trained on (the test
split, plus training samples no participating client held). The evaluation set is
matched per class, the same number of members and non-members of each class, so the
attack cannot score on the label prior: the AUC measures membership only.

Attacks.

* Loss threshold (Yeom et al. 2018): score = -cross-entropy of the final model on the
  sample; a member is guessed when the loss is low.
* Reference models (``shadow_runs > 0``), LiRA offline (Carlini et al., S&P 2022):
  ``shadow_runs`` trainings with this project's :class:`~secure_fed.run.trainer.Trainer` and
  the run's own configuration (seed changed), each on a random shadow training set with
  the run's class histogram drawn from the data outside the evaluation set, so every
  evaluated sample is OUT for every shadow model. For each sample, phi = logit of the model's probability of
  the true class; the score is (phi_target - mean_out(x)) / std_out, with the std pooled
  over all samples (the paper's fixed-variance variant, the right one for few shadows).

Metrics (evidence, not a test: ``passed`` is None): ROC AUC with a bootstrap percentile
interval, TPR at 1% and 0.1% FPR with intervals, ROC data (linear and log-log), the raw
per-sample scores. With n non-members the FPR resolution is 1/n: TPR at 0.1% FPR is TPR
at zero false positives when n < 1000 (the summary says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from tqdm import tqdm

from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.client import ClientShard
from secure_fed.fl.data.datasets import load_dataset
from secure_fed.fl.data.partition import make_partition
from secure_fed.fl.gfpl import gfpl_model
from secure_fed.fl.models import build_model
from secure_fed.run.rundir import load_config, load_json, load_torch, read_audit

NAME = "membership"
BOOTSTRAP = 1000
FPR_POINTS = (0.01, 0.001)
CI_LEVEL = 0.95


# -- metrics -------------------------------------------------------------------------------
# AUC is computed here rather than by sklearn because the bootstrap needs it for a thousand
# resamples at once: one vectorized ranking of the resample matrix. tests check both
# functions against sklearn.metrics.roc_curve / roc_auc_score.
def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first, starting at
    (0, 0) with threshold +inf; a sample is called a member when its score >= threshold."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ConfigError("ROC needs both members and non-members")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return (np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, s[last]])


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P[score(member) > score(non-member)] + 1/2 P[tie]."""
    return float(_auc_rows(np.asarray(labels, dtype=bool)[None, :], np.asarray(scores, dtype=np.float64)[None, :])[0])


def _auc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC of every row (Mann-Whitney U with mid-ranks for ties), vectorized over rows."""
    n = s.shape[1]
    ranks = stats.rankdata(s, axis=1)  # mid-ranks for ties
    pos = y.sum(axis=1)
    neg = n - pos
    u = (ranks * y).sum(axis=1) - pos * (pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (pos * neg)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Largest TPR over the ROC points with FPR <= ``fpr`` (no interpolation upwards)."""
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr + 1e-12].max())


def bootstrap_metrics(labels: np.ndarray, scores: np.ndarray, *, resamples: int = BOOTSTRAP,
                      seed: int | None = None, level: float = CI_LEVEL) -> dict[str, float]:
    """Point estimates and percentile bootstrap intervals of AUC and TPR at each FPR point.

    Members and non-members are resampled separately (stratified), so every resample has
    both classes in the original numbers.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y), np.flatnonzero(~y)
    draws = np.concatenate([rng.choice(pos_idx, (resamples, pos_idx.size)), rng.choice(neg_idx, (resamples, neg_idx.size))], axis=1)
    yb = np.broadcast_to(np.r_[np.ones(pos_idx.size, bool), np.zeros(neg_idx.size, bool)], draws.shape)
    aucs = _auc_rows(yb, s[draws])
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {"auc": auc_score(y, s), "auc_ci_low": float(np.quantile(aucs, lo_q)), "auc_ci_high": float(np.quantile(aucs, hi_q))}
    lab = yb[0]
    for fpr in FPR_POINTS:
        key = _fpr_key(fpr)
        vals = np.array([tpr_at_fpr(lab, s[d], fpr) for d in draws])
        out[key] = tpr_at_fpr(y, s, fpr)
        out[key + "_ci_low"] = float(np.quantile(vals, lo_q))
        out[key + "_ci_high"] = float(np.quantile(vals, hi_q))
    return out


def _fpr_key(fpr: float) -> str:
    return "tpr_at_" + (f"{fpr * 100:g}".replace(".", "_")) + "pct_fpr"


# -- the run -------------------------------------------------------------------------------------
def _config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir)[0]


def _participants(run_dir: Path, clients: int) -> list[int]:
    seen: set[int] = set()
    path = run_dir / "audit.jsonl"
    if not path.exists():
        raise ConfigError(f"RUN_DIR: audit.jsonl is missing in {run_dir}; audit a finished run directory")
    for rec in read_audit(path):
        if rec.get("kind") == "round" and not rec.get("aborted"):
            seen.update(int(c) for c in rec.get("summed") or [])
    return sorted(c for c in seen if 0 <= c < clients)


def _load_model(run_dir: Path, cfg: TrainConfig, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    path = run_dir / "model.pt"
    if not path.exists():
        raise ConfigError(f"RUN_DIR: model.pt is missing in {run_dir}; audit a finished run directory")
    model = build_model(cfg.dataset, num_classes, input_shape, cfg.feature_dim)
    if cfg.algorithm == "gfpl":  # the run's model carries GFPL's dual classifier
        model = gfpl_model(model, cfg, num_classes)
    state = load_torch(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not the model of this run's configuration "
                          f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})") from None
    return model.eval()


@torch.no_grad()
def per_sample_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(cross-entropy loss, logit of the true-class probability) per sample (float64).

    The logit phi = log p - log(1 - p) is computed stably from log-softmax, as LiRA uses it.
    """
    model.eval()
    losses, phis = [], []
    for i in range(0, x.shape[0], batch_size):
        logp = F.log_softmax(model(x[i:i + batch_size]).double(), dim=1)
        lp = logp.gather(1, y[i:i + batch_size, None]).squeeze(1)
        others = logp.clone()
        others.scatter_(1, y[i:i + batch_size, None], -math.inf)
        phis.append((lp - torch.logsumexp(others, dim=1)).numpy())
        losses.append((-lp).numpy())
    return np.concatenate(losses), np.concatenate(phis)


def evaluation_set(member_idx: np.ndarray, member_y: np.ndarray, pool_idx: np.ndarray, pool_y: np.ndarray,
                   num_classes: int, gen: np.random.Generator, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class matched (members, non-members): for each class the same number of each,
    min(members of c, non-members of c), drawn at random; ``limit`` caps each side."""
    mem, non = [], []
    for c in range(num_classes):
        a, b = member_idx[member_y == c], pool_idx[pool_y == c]
        k = min(a.size, b.size)
        mem.append(gen.choice(a, k, replace=False))
        non.append(gen.choice(b, k, replace=False))
    m, n = np.concatenate(mem), np.concatenate(non)
    if limit is not None and m.size > limit:
        keep = np.sort(gen.choice(m.size, limit, replace=False))
        m, n = m[keep], n[keep]
    return m, n


def shadow_training_set(pool: np.ndarray, pool_y: np.ndarray, member_y: np.ndarray, num_classes: int,
                        gen: np.random.Generator) -> np.ndarray:
    """A shadow training set with the run's class histogram: for each class, as many random
    samples of ``pool`` as the run's members of that class (fewer if the pool runs out)."""
    want = np.bincount(member_y, minlength=num_classes)
    take = [gen.choice(pool[pool_y == c], min(int(want[c]), int((pool_y == c).sum())), replace=False)
            for c in range(num_classes)]
    return np.sort(np.concatenate(take))


def _shadow_models(cfg: TrainConfig, x_all: torch.Tensor, y_all: torch.Tensor, pool: np.ndarray, member_y: np.ndarray,
                   runs: int, seed: int | None, progress: Callable[[int], None] | None) -> list[nn.Module]:
    """Train ``runs`` reference models with the project's Trainer and the run's config (new
    seed) on shadow training sets drawn from ``pool`` (:func:`shadow_training_set`),
    partitioned among the clients with the run's scheme (no second long tail: the class
    histogram already is the run's)."""
    from secure_fed.device import to_device
    from secure_fed.run.trainer import Trainer

    gen = np.random.default_rng(seed)
    y_np = y_all.numpy()
    num_classes = int(y_np.max()) + 1
    models = []
    for _ in range(runs):
        shadow_seed = int(gen.integers(0, 2**31 - 1))
        take = shadow_training_set(pool, y_np[pool], member_y, num_classes, gen)
        changes: dict[str, Any] = {"seed": shadow_seed, "run_id": None, "hardened": seed is None, "out": "unused"}
        if hasattr(cfg, "executor"):  # the shards are replaced below, so the clients must run here
            changes["executor"] = "local"
        scfg = cfg.replace(**changes)
        trainer = Trainer(scfg, progress=False, log=lambda s: None, write_outputs=False)
        parts = make_partition(y_np[take], cfg.clients, cfg.partition, cfg.alpha, 1.0, shadow_seed)
        # The shadow trains on its own data: the trainer's shards are replaced before any
        # round (the layout's declared bounds use the run's training size: still valid, as
        # the shadow set is no larger).
        trainer.parts = [take[p] for p in parts]
        trainer.shards = [ClientShard(k, to_device(x_all[idx], trainer.device), to_device(y_all[idx], trainer.device))
                          for k, idx in enumerate(trainer.parts)]
        trainer.run()
        models.append(trainer.server.model.cpu().eval())
        if progress is not None:
            progress(1)
    return models


def _plots(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    lin = [{"label": k, "x": f.tolist(), "y": t.tolist()} for k, (f, t) in curves.items()]
    lin.append({"label": "chance", "x": [0.0, 1.0], "y": [0.0, 1.0]})
    log = []
    for k, (f, t) in curves.items():
        ok = (f > 0) & (t > 0)
        log.append({"label": k, "x": f[ok].tolist(), "y": t[ok].tolist()})
    floor = min((float(f[f > 0].min()) for f, _ in curves.values() if (f > 0).any()), default=1e-3)
    log.append({"label": "chance", "x": [floor, 1.0], "y": [floor, 1.0]})
    return [
        {"title": "Membership inference: ROC", "xlabel": "false positive rate", "ylabel": "true positive rate",
         "xscale": "linear", "yscale": "linear", "series": lin},
        {"title": "Membership inference: ROC (log-log)", "xlabel": "false positive rate", "ylabel": "true positive rate",
         "xscale": "log", "yscale": "log", "series": log},
    ]


def audit_membership(run_dir: Path, *, seed: int | None = None, shadow_runs: int = 0, max_samples: int | None = None,
                     resamples: int = BOOTSTRAP, progress: bool | Callable[[int], None] | None = None) -> dict[str, Any]:
    """Membership inference against a finished run's final global model (module docstring).

    ``seed``: sample selection, bootstrap and shadow trainings (None: fresh entropy, shadows
    in hardened mode). ``shadow_runs``: reference trainings for the LiRA-offline attack (0:
    loss threshold only). ``max_samples``: cap on members (= non-members) evaluated.
    ``progress``: True for a progress bar over the shadow trainings, or a callback.
    """
    run_dir = Path(run_dir)
    if shadow_runs < 0:
        raise ConfigError(f"--shadow-runs: must be >= 0, got {shadow_runs}")
    if resamples < 10:
        raise ConfigError(f"resamples: need at least 10 bootstrap resamples, got {resamples}")
    if max_samples is not None and max_samples < 2:
        raise ConfigError(f"max_samples: must be >= 2, got {max_samples}")
    cfg = _config(run_dir)
    data = load_dataset(cfg.dataset, cfg.data_root, download=False)
    train_y = data.train_y.numpy()
    parts = make_partition(train_y, cfg.clients, cfg.partition, cfg.alpha, cfg.imbalance, cfg.seed)
    recorded = load_json(run_dir / "partition.json").get("samples_per_client")
    if recorded != [int(len(p)) for p in parts]:
        raise ConfigError("RUN_DIR: partition.json does not match the partition rebuilt from config.json; "
                          "the run's data cannot be reconstructed (different dataset files or code version)")
    who = _participants(run_dir, cfg.clients)
    if not who:
        raise ConfigError("RUN_DIR: no round summed any upload; the model has no members to infer")
    n_train = train_y.size
    members = np.sort(np.concatenate([parts[c] for c in who]))
    # one index space: training samples 0..n_train-1, then the test split
    x_all = torch.cat([data.train_x, data.test_x])
    y_all = torch.cat([data.train_y, data.test_y])
    used = np.zeros(n_train, dtype=bool)
    used[np.concatenate(parts)] = True
    # never trained on: the test split, training samples no client held, non-participants' samples
    unseen_by_model = np.r_[np.flatnonzero(~used), np.setdiff1d(np.flatnonzero(used), members),
                            n_train + np.arange(data.test_y.shape[0])]
    gen = np.random.default_rng(seed)
    y_np = y_all.numpy()
    mem, non = evaluation_set(members, y_np[members], unseen_by_model, y_np[unseen_by_model], data.num_classes, gen, max_samples)
    if mem.size < 2:
        raise ConfigError("RUN_DIR: fewer than 2 matched members/non-members; nothing to evaluate")
    idx = np.r_[mem, non]
    labels = np.r_[np.ones(mem.size, bool), np.zeros(non.size, bool)]
    model = _load_model(run_dir, cfg, data.num_classes, data.input_shape)
    loss, phi = per_sample_outputs(model, x_all[idx], y_all[idx])
    boot_seed = None if seed is None else int(gen.integers(0, 2**31 - 1))
    results = {"loss": bootstrap_metrics(labels, -loss, resamples=resamples, seed=boot_seed)}
    scores: dict[str, list[float]] = {"loss": loss.tolist(), "phi": phi.tolist()}
    curves = {"loss threshold": roc_curve(labels, -loss)[:2]}
    if shadow_runs > 0:
        eval_set = np.zeros(y_all.shape[0], dtype=bool)
        eval_set[idx] = True
        shadow_pool = np.flatnonzero(~eval_set)
        shadow_seed = None if seed is None else int(gen.integers(0, 2**31 - 1))
        bar = tqdm(total=shadow_runs, desc="shadow trainings", unit="run", leave=False) if progress is True else None
        step = bar.update if bar is not None else (progress if callable(progress) else None)
        try:
            models = _shadow_models(cfg, x_all, y_all, shadow_pool, y_np[members], shadow_runs, shadow_seed, step)
        finally:
            if bar is not None:
                bar.close()
        phis = np.stack([per_sample_outputs(m, x_all[idx], y_all[idx])[1] for m in models])
        mu = phis.mean(axis=0)
        if shadow_runs > 1:  # fixed variance: pooled over samples, (runs - 1) degrees of freedom each
            sd = float(np.sqrt(((phis - mu) ** 2).sum() / (phis.shape[1] * (shadow_runs - 1))))
        else:  # one shadow: no per-sample spread to pool; the spread across samples stands in
            sd = float(phis.std())
        lira = (phi - mu) / max(sd, 1e-12)
        results["lira_offline"] = bootstrap_metrics(labels, lira, resamples=resamples, seed=boot_seed)
        scores["lira_offline"] = lira.tolist()
        scores["shadow_phi"] = phis.tolist()
        curves[f"LiRA offline ({shadow_runs} shadow runs)"] = roc_curve(labels, lira)[:2]
    summary: dict[str, Any] = {
        "members": int(mem.size), "non_members": int(non.size), "participating_clients": len(who),
        "dp": cfg.dp, "shadow_runs": shadow_runs, "bootstrap": resamples, "ci_level": CI_LEVEL,
        "fpr_resolution": 1.0 / non.size, "mean_loss_members": float(loss[labels].mean()),
        "mean_loss_non_members": float(loss[~labels].mean()), "seed": seed,
    }
    for attack, res in results.items():
        for k, v in res.items():
            summary[f"{attack}_{k}"] = v
    raw = {"sample_index": idx.tolist(), "split": ["train" if i < n_train else "test" for i in idx],
           "dataset_index": [int(i if i < n_train else i - n_train) for i in idx],
           "label": y_np[idx].tolist(), "member": labels.astype(int).tolist(), "scores": scores}
    return {"name": NAME, "summary": summary, "passed": None, "plots": _plots(curves), "raw": raw}


__all__ = ["audit_membership", "auc_score", "bootstrap_metrics", "evaluation_set", "per_sample_outputs",
           "roc_curve", "tpr_at_fpr"]
