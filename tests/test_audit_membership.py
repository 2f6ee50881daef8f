"""Membership inference: metric code against sklearn, and an end-to-end run on a tiny digits run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics

from secure_fed.audit.membership import (
    auc_score,
    audit_membership,
    bootstrap_metrics,
    evaluation_set,
    per_sample_outputs,
    roc_curve,
    tpr_at_fpr,
)
from secure_fed.audit.runner import validate_result
from secure_fed.errors import ConfigError


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for n, shift, ties in ((50, 0.0, False), (300, 0.7, False), (200, 1.5, True), (7, 0.3, True)):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        s = rng.normal(size=n) + shift * y
        if ties:
            s = np.round(s, 1)
        out.append((y, s))
    return out


@pytest.mark.parametrize("case", range(4))
def test_roc_and_auc_match_sklearn(case: int) -> None:
    y, s = _cases()[case]
    f, t, th = roc_curve(y, s)
    fs, ts, ths = metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(f, fs)
    np.testing.assert_allclose(t, ts)
    np.testing.assert_allclose(th[1:], ths[1:])
    assert auc_score(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("case", range(4))
def test_tpr_at_fpr_is_the_best_roc_point_within_the_fpr(case: int) -> None:
    y, s = _cases()[case]
    fs, ts, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    for fpr in (0.0, 0.001, 0.01, 0.1, 0.5):
        assert tpr_at_fpr(y, s, fpr) == pytest.approx(ts[fs <= fpr].max())


def test_bootstrap_interval_covers_and_is_seeded() -> None:
    y, s = _cases()[1]
    a = bootstrap_metrics(y, s, resamples=300, seed=4)
    b = bootstrap_metrics(y, s, resamples=300, seed=4)
    assert a == b
    assert a["auc_ci_low"] < a["auc"] < a["auc_ci_high"]
    assert a["tpr_at_1pct_fpr_ci_low"] <= a["tpr_at_1pct_fpr"] <= a["tpr_at_1pct_fpr_ci_high"]
    # resampled AUCs by hand, through sklearn, give the same interval
    rng = np.random.default_rng(4)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    draws = np.concatenate([rng.choice(pos, (300, pos.size)), rng.choice(neg, (300, neg.size))], axis=1)
    lab = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    ref = [metrics.roc_auc_score(lab, s[d]) for d in draws]
    assert a["auc_ci_low"] == pytest.approx(np.quantile(ref, 0.025))
    assert a["auc_ci_high"] == pytest.approx(np.quantile(ref, 0.975))


def test_perfect_and_useless_scores() -> None:
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert auc_score(y, y.astype(float)) == 1.0
    assert tpr_at_fpr(y, y.astype(float), 0.001) == 1.0
    assert auc_score(y, np.zeros(200)) == 0.5
    with pytest.raises(ConfigError):
        roc_curve(np.ones(5, bool), np.arange(5.0))


def test_evaluation_set_is_matched_per_class() -> None:
    gen = np.random.default_rng(1)
    mem_idx, mem_y = np.arange(100), np.r_[np.zeros(70, int), np.ones(30, int)]
    pool_idx, pool_y = np.arange(100, 160), np.r_[np.zeros(20, int), np.ones(40, int)]
    m, n = evaluation_set(mem_idx, mem_y, pool_idx, pool_y, 2, gen)
    assert m.size == n.size == 20 + 30
    assert np.bincount(mem_y[m], minlength=2).tolist() == [20, 30]
    assert not set(m) & set(n)


def test_per_sample_outputs_are_loss_and_logit() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    loss, phi = per_sample_outputs(model, x, y, batch_size=4)
    p = torch.softmax(model(x).double(), 1).gather(1, y[:, None]).squeeze(1).detach().numpy()
    np.testing.assert_allclose(loss, -np.log(p), rtol=1e-6)
    np.testing.assert_allclose(phi, np.log(p / (1 - p)), rtol=1e-6, atol=1e-9)


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(plain_run: Path) -> Path:
    """The session's finished tiny digits run (tests/conftest.py), this module's copy."""
    return plain_run


def test_end_to_end_on_a_tiny_digits_run(tiny_run: Path) -> None:
    a = audit_membership(tiny_run, seed=3, resamples=200)
    b = audit_membership(tiny_run, seed=3, resamples=200)
    assert a == b
    s = a["summary"]
    assert a["name"] == "membership" and a["passed"] is None
    assert s["members"] == s["non_members"] == 360  # digits: 360 test images, classes matched
    assert s["loss_auc_ci_low"] <= s["loss_auc"] <= s["loss_auc_ci_high"]
    raw = a["raw"]
    assert len(raw["scores"]["loss"]) == 720 == len(raw["member"]) and sum(raw["member"]) == 360
    members = [i for i, m in zip(raw["dataset_index"], raw["member"], strict=True) if m]
    assert all(sp == "train" for sp, m in zip(raw["split"], raw["member"], strict=True) if m)
    assert len(set(members)) == 360
    assert [p["xscale"] for p in a["plots"]] == ["linear", "log"]
    json.dumps(a)
    assert validate_result("membership", a)["summary"] == s  # the audit runner's contract


def test_reference_model_attack_with_one_shadow(tiny_run: Path) -> None:
    out = audit_membership(tiny_run, seed=1, shadow_runs=1, max_samples=100, resamples=50)
    s = out["summary"]
    assert s["members"] == 100 and s["shadow_runs"] == 1
    assert 0.0 <= s["lira_offline_auc"] <= 1.0
    assert len(out["raw"]["scores"]["shadow_phi"]) == 1
    assert any("LiRA" in ser["label"] for ser in out["plots"][0]["series"])


def test_bad_options_and_missing_files(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shadow-runs"):
        audit_membership(tiny_run, shadow_runs=-1)
    with pytest.raises(ConfigError, match="config.json"):
        audit_membership(tmp_path)
