"""Upload-inversion audit: the analytic attack on per-class sums, and the audit on real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dp.clipping import per_class_clipped_sums
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.audit.inversion import (
    AttackerKnowledge,
    _AuditTrainer,
    _replay_round,
    audit_inversion,
    invert,
    score_client,
)
from secure_fed.audit.runner import run_audits
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.client import per_class_gradient_sums
from secure_fed.run.trainer import Trainer

C, DIM = 4, 6
# --classifier meta: the weight-gradient block the class-mean attack reads travels only then
SMALL = dict(clients=4, cohort=4, rounds=2, batch_size=32, rounds_of_hp=3, meta_steps=5, meta_per_class=5,
             secagg="secagg+", dropout=0.0, dp="off", target_epsilon=None, hardened=False, classifier="meta")


def _layout(dp: str = "off") -> VectorLayout:
    last = ("holders", (C,), 1.0) if dp == "off" else ("class_count", (C,), 100.0)
    return VectorLayout.build([("feat_grad", (C, DIM), 1e3), ("cls_grad_w", (C, C, DIM), 1e3),
                               ("cls_grad_b", (C, C), 1e3), last])


def _data(seed: int, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    f = torch.rand(len(y), DIM, generator=g, dtype=torch.float64) + y[:, None].double() * 0.3
    return f, y


def _knowledge(w: torch.Tensor, b: torch.Tensor, dp: str = "off", noise: float = 0.0, rate: float = 1.0) -> AttackerKnowledge:
    return AttackerKnowledge(w.numpy(), b.numpy(), dp, count_coordinate=0.5, release_rate=rate, noise_std=noise)


def _true_means(f: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return np.stack([f[y == c].mean(0).numpy() if (y == c).any() else np.zeros(DIM) for c in range(C)])


def _upload(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    gf, gw, gb = per_class_gradient_sums(f, y, w, b)
    holders = (torch.bincount(y, minlength=C) > 0).double()
    return _layout().flatten({"feat_grad": gf.numpy(), "cls_grad_w": gw.numpy(), "cls_grad_b": gb.numpy(),
                              "holders": holders.numpy()})


def test_uniform_model_gives_exact_means_and_counts() -> None:
    """With an uninformative classifier every sample has the same weight 1 - 1/C: the plain
    class mean and the exact count come out, whatever the count."""
    counts = [1, 7, 0, 31]
    f, y = _data(0, counts)
    w, b = torch.zeros(C, DIM, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    inv = invert(_layout(), _upload(f, y, w, b), _knowledge(w, b))
    truth = _true_means(f, y)
    for c, n in enumerate(counts):
        if n:
            assert np.allclose(inv.means[c], truth[c], rtol=1e-10, atol=1e-12)
            assert round(inv.counts[c]) == n
    assert inv.present.tolist() == [n > 0 for n in counts]


def test_single_sample_class_is_recovered_exactly_by_any_model() -> None:
    f, y = _data(1, [1, 5, 1, 9])
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(C, DIM, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    inv = invert(_layout(), _upload(f, y, w, b), _knowledge(w, b))
    for c in (0, 2):
        sample = f[y == c][0].numpy()
        assert np.allclose(inv.means[c], sample, rtol=1e-10)
        assert round(inv.counts[c]) == 1


def test_sums_defeat_the_norm_ratio_count_leak() -> None:
    """feat_grad is W^T of the bias sum, so |W^T B| / |feat_grad| is 1 for every count (the
    reference's per-class *means* made this ratio 1/n_c)."""
    f, y = _data(3, [2, 9, 4, 20])
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(C, DIM, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    gf, _, gb = per_class_gradient_sums(f, y, w, b)
    ratio = (gb @ w).norm(dim=1) / gf.norm(dim=1)
    assert torch.allclose(ratio, torch.ones(C, dtype=torch.float64))


def test_score_client_metrics() -> None:
    from secure_fed.audit.inversion import Guess

    truth = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    guess = Guess(np.array([[2.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), np.array([3.2, 0.4, 7.0]), np.array([True, False, True]))
    row = score_client(guess, truth, np.array([3, 40, 0]), batch_size=32)
    assert row["classes"] == [0, 1]
    assert row["cosine"][0] == pytest.approx(1.0) and row["cosine"][1] == pytest.approx(np.sqrt(0.5))
    assert row["rel_l2"][0] == pytest.approx(1.0)
    assert row["count_hits"] == [True, False] and row["small_count_hits"] == [True]
    assert row["label_precision"] == 0.5 and row["label_recall"] == 0.5


def test_noise_energy_test_finds_the_label_set() -> None:
    """Under DP the label set comes from each class's block energy against the public noise."""
    lay = _layout("sample")
    f, y = _data(5, [30, 0, 25, 0])
    g = torch.Generator().manual_seed(6)
    w, b = torch.randn(C, DIM, generator=g, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    sums = per_class_clipped_sums(f, y, w, b, clip=1.0, count_coordinate=0.5)
    vec = lay.flatten({"feat_grad": sums.feature.numpy(), "cls_grad_w": sums.weight.numpy(),
                       "cls_grad_b": sums.bias.numpy(), "class_count": sums.count.numpy()})
    rng = np.random.default_rng(7)
    noisy = vec + rng.normal(0.0, 0.5, vec.size)
    inv = invert(lay, noisy, _knowledge(w, b, "sample", noise=0.5))
    assert inv.present.tolist() == [True, False, True, False]
    # Nothing clipped (a loose clip norm): the count coordinate carries the count exactly.
    loose = per_class_clipped_sums(f, y, w, b, clip=1e3, count_coordinate=0.5)
    assert loose.clipped == 0
    vec = lay.flatten({"feat_grad": loose.feature.numpy(), "cls_grad_w": loose.weight.numpy(),
                       "cls_grad_b": loose.bias.numpy(), "class_count": loose.count.numpy()})
    clean = invert(lay, vec, _knowledge(w, b, "sample"))
    assert [round(x) for x in clean.counts] == [30, 0, 25, 0]
    half = invert(lay, vec, _knowledge(w, b, "sample", rate=0.5))  # a Poisson(1/2) release is scaled up
    assert [round(x) for x in half.counts] == [60, 0, 50, 0]


# -- the audit on real runs ----------------------------------------------------------------------
# meta_run (tests/conftest.py): the session's finished SecAgg+ run without DP, --classifier meta:
# SMALL with seed 1
def test_the_shared_run_is_small_with_seed_1() -> None:
    from tests.conftest import META_RUN

    assert META_RUN == {**SMALL, "seed": 1}



def _pooled(res: dict[str, Any], point: str, view: str) -> dict[str, Any]:
    return next(r for r in res["raw"]["points"] if r["point"] == point)["views"][view]["pooled"]


def test_audit_recovers_first_round_uploads_but_not_clients_from_the_sum(meta_run: Path) -> None:
    res = audit_inversion(meta_run, seed=0, progress=False)
    json.dumps(res, allow_nan=False)
    assert res["name"] == "inversion" and res["passed"] is True
    up = _pooled(res, "first", "upload")
    assert up["cosine_mean"] >= 0.99 and up["small_count_hit_rate"] == 1.0
    assert up["label_precision"] == 1.0 and up["label_recall"] == 1.0
    srv, base = _pooled(res, "first", "server"), _pooled(res, "first", "baseline")
    assert srv["cosine_mean"] <= base["cosine_mean"] + 0.01
    assert srv["small_count_hit_rate"] < 0.5
    first = next(r for r in res["raw"]["points"] if r["point"] == "first")
    assert first["summed"] == [0, 1, 2, 3] and first["aggregator"] == "secagg+"
    assert [p["title"] for p in res["plots"]] and all(s["x"] for p in res["plots"] for s in p["series"])


def test_server_view_is_the_real_secure_sum_of_the_tapped_uploads(meta_run: Path) -> None:
    cfg = TrainConfig.from_dict(json.loads((meta_run / "config.json").read_text()))
    trainer = _AuditTrainer(cfg, audit_seed=0)
    trainer.resume_from(meta_run)
    _, uploads, agg, reason = _replay_round(trainer, trainer.start_round, seed=0)
    assert reason is None and agg is not None and agg.meta["aggregator"] == "secagg+"
    assert sorted(uploads) == [0, 1, 2, 3]
    total = sum(uploads.values())
    assert np.allclose(agg.vector, total, rtol=0, atol=1e-9)  # decoding is linear in the ring
    assert all(not np.allclose(agg.vector, u) for u in uploads.values())


def test_same_seed_same_result(meta_run: Path) -> None:
    a = audit_inversion(meta_run, seed=3, points="final", progress=False)
    b = audit_inversion(meta_run, seed=3, points=["final"], progress=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_dp_noise_degrades_even_the_population_mean(tmp_path: Path) -> None:
    cfg = TrainConfig(**{**SMALL, "rounds": 1, "dp": "sample", "noise_multiplier": 20.0, "out": str(tmp_path),
                         "run_id": "dp", "seed": 1})
    Trainer(cfg, progress=False, log=lambda s: None).run()
    res = audit_inversion(tmp_path / "dp", seed=0, points="first", progress=False)
    first = res["raw"]["points"][0]
    assert first["noise_std_sum"] > 0
    pop = float(np.mean(first["population"]["cosine"]))
    assert pop < 0.95  # DP off: the sum recovers the population's class means at cosine ~1
    assert _pooled(res, "first", "upload")["small_count_hit_rate"] < 0.5


def test_bad_inputs(tmp_path: Path, meta_run: Path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        audit_inversion(tmp_path)
    with pytest.raises(ConfigError, match="the inversion audit has no option 'bogus'"):
        run_audits(meta_run, "inversion", options={"inversion": {"bogus": 1}}, progress=False)
    with pytest.raises(ConfigError, match="--inversion-points"):
        audit_inversion(meta_run, points="middle")
    with pytest.raises(ConfigError, match="--inversion-max-advantage"):
        audit_inversion(meta_run, max_advantage=-1)
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(dp="off", target_epsilon=None).to_dict()))
    with pytest.raises(ConfigError, match="checkpoint.pt"):
        audit_inversion(tmp_path)


def test_not_applicable_to_fedavg(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(algorithm="fedavg").to_dict()))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    res = audit_inversion(tmp_path)
    assert res["passed"] is None and res["summary"]["applicable"] is False


def test_without_the_weight_block_no_class_mean_is_recovered() -> None:
    """--classifier fedavg uploads U (C x C) and no weight block: the attack gets counts and
    the label set, but no class-mean feature."""
    counts = [1, 7, 0, 31]
    f, y = _data(0, counts)
    w, b = torch.zeros(C, DIM, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    _, _, gb = per_class_gradient_sums(f, y, w, b)
    lay = VectorLayout.build([("cls_grad_b", (C, C), 1e3), ("holders", (C,), 1.0)])
    vec = lay.flatten({"cls_grad_b": gb.numpy(), "holders": (np.array(counts) > 0).astype(float)})
    inv = invert(lay, vec, _knowledge(w, b))
    assert np.count_nonzero(inv.means) == 0
    assert [round(c) for c in inv.counts] == counts
