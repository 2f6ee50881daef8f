"""FedHPro's residual release (U, C x C) and the honest broadcast (DESIGN.md sections 2 and 6).

* The derivation the release rests on: with logits = W f + b, a sample's feature gradient
  is W^T (p - e_y), so the per-class feature-gradient sum is W^T U_c (checked against
  autograd), and matching from U W equals matching from the old feature-gradient sums.
* One sample's contribution to the release never exceeds the stated bound.
* Unmatched hyper-prototypes are never broadcast; the control arms behave as documented.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dp.clipping import (
    RESIDUAL_NORM_BOUND,
    per_class_clipped_sums,
    per_class_residual_sums,
    per_class_weight_sums,
    residual_release_norm,
)
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.fl.client import per_class_gradient_sums
from secure_fed.fl.fedhpro import FedHProServer
from secure_fed.fl.losses import hpal_loss, hpal_loss_masked, hpcl_loss, hpcl_loss_masked
from secure_fed.fl.matching import init_hyper_prototypes, match_hyper_prototypes
from secure_fed.privacy.noise import PrivacySettings, RunPrivacy
from secure_fed.privacy.upload import COUNT_SHARE, RESIDUAL_SENSITIVITY, UploadSpec

C, DIM = 4, 6


def _head(seed: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, DIM, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, C, (n,), generator=g)
    w = torch.randn(C, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    return f, y, w, b


# -- the derivation --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_gradient_is_w_transpose_residual_by_autograd(seed: int) -> None:
    f, y, w, b = _head(seed)
    f = f.clone().requires_grad_(True)
    F.cross_entropy(f @ w.T + b, y, reduction="sum").backward()
    assert f.grad is not None
    r = torch.softmax(f.detach() @ w.T + b, dim=1) - F.one_hot(y, C).double()
    torch.testing.assert_close(f.grad, r @ w, rtol=1e-12, atol=1e-12)  # row i: W^T (p_i - e_{y_i})
    u = per_class_residual_sums(f.detach() @ w.T + b, y, clip=10.0).residual
    onehot = F.one_hot(y, C).double()
    torch.testing.assert_close(u @ w, onehot.T @ f.grad, rtol=1e-12, atol=1e-12)  # W^T U_c per class
    old_feature, _, old_bias = per_class_gradient_sums(f.detach(), y, w, b)
    torch.testing.assert_close(u, old_bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u @ w, old_feature, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matching_from_u_w_equals_matching_from_feature_gradient_sums(seed: int) -> None:
    f, y, w, b = _head(seed, n=60)
    w, b, f = w.float(), b.float(), f.float()
    old_feature, _, _ = per_class_gradient_sums(f, y, w, b)
    u = per_class_residual_sums(f @ w.T + b, y, clip=10.0).residual
    p0 = init_hyper_prototypes(C, 5, DIM, torch.Generator().manual_seed(seed), "cpu")
    active = torch.ones(C, dtype=torch.bool)
    old = match_hyper_prototypes(p0, w, b, old_feature, active, steps=30, lr=0.1)
    new = match_hyper_prototypes(p0, w, b, u @ w, active, steps=30, lr=0.1)
    assert float((old - p0).abs().max()) > 1e-3  # matching moved the anchors
    torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


# -- the bound ---------------------------------------------------------------------------------
def _one_sample_change(logits: torch.Tensor, y: torch.Tensor, clip: float, count: float) -> float:
    full = per_class_residual_sums(logits, y, clip, count).flat()
    removed = per_class_residual_sums(logits[1:], y[1:], clip, count).flat()
    return float(torch.linalg.vector_norm(full - removed))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-60, 60, allow_nan=False), min_size=C, max_size=C), st.integers(0, C - 1),
       st.floats(0, 2))
def test_one_samples_contribution_never_exceeds_the_bound(row: list[float], label: int, count: float) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    r = torch.softmax(logits, 1)[0] - F.one_hot(torch.tensor(label), C).double()
    assert float(r.norm()) <= RESIDUAL_NORM_BOUND
    bound = residual_release_norm(count)
    s = per_class_residual_sums(logits, torch.tensor([label]), clip=bound, count_coordinate=count)
    assert float(s.flat().norm()) <= bound + 1e-12
    # the natural bound: a sample is never scaled by more than Opacus's 1e-6 in the factor
    unclipped = torch.cat([r, torch.tensor([count], dtype=torch.float64)])
    assert float(s.flat().norm()) >= float(unclipped.norm()) * (1 - 1e-6 / bound) - 1e-15


def test_adversarial_logits_approach_but_never_exceed_the_bound() -> None:
    """All the mass on one wrong class is the worst case: |r| -> sqrt(2)."""
    spec = UploadSpec("sample", clip=1.0, train_size=100)
    s_bound, c = spec.release_sensitivity, spec.count_coordinate
    assert s_bound == pytest.approx(RESIDUAL_SENSITIVITY)
    assert c == pytest.approx(COUNT_SHARE * s_bound)
    assert residual_release_norm(c) == pytest.approx(s_bound)  # count coordinate inside the sensitivity
    worst = 0.0
    for big in (1.0, 10.0, 40.0, 700.0, 1e6):
        logits = torch.zeros(3, C, dtype=torch.float64)
        logits[:, 1] = big  # confident and wrong for label 0
        logits[2, 1], logits[2, 0] = big, -big
        y = torch.zeros(3, dtype=torch.long)
        for i in range(3):
            change = _one_sample_change(torch.roll(logits, -i, 0), torch.roll(y, -i, 0), s_bound, c)
            assert change <= s_bound + 1e-12
            worst = max(worst, change)
    assert worst > 0.999 * s_bound  # the bound is tight


def test_residual_sums_touch_only_the_classes_in_the_batch() -> None:
    f, y, w, b = _head(3)
    logits = f @ w.T + b
    base = per_class_residual_sums(logits, y, 2.0, 0.5)
    marker = torch.full((C, C), 7.0, dtype=torch.float64)
    into = per_class_residual_sums(logits[:0], y[:0], 2.0, 0.5)
    into.residual.copy_(marker)
    keep = y != 2
    out = per_class_residual_sums(logits[keep], y[keep], 2.0, 0.5, into=into)
    assert torch.equal(out.residual[2], marker[2]) and float(out.count[2]) == 0.0
    # adding classes one batch at a time gives the one-call release
    acc = per_class_residual_sums(logits[:0], y[:0], 2.0, 0.5)
    for cls in range(C):
        acc = per_class_residual_sums(logits[y == cls], y[y == cls], 2.0, 0.5, into=acc)
    torch.testing.assert_close(acc.flat(), base.flat())


def test_weight_sums_are_clipped_per_sample_and_absent_classes_untouched() -> None:
    f, y, w, b = _head(4)
    logits = f @ w.T + b
    clip = 0.8
    out, clipped = per_class_weight_sums(logits, f, y, clip)
    r = torch.softmax(logits, 1) - F.one_hot(y, C).double()
    expect = torch.zeros(C, C, DIM, dtype=torch.float64)
    scaled = 0
    for i in range(f.shape[0]):
        g = torch.outer(r[i], f[i])
        factor = min(1.0, clip / (float(g.norm()) + 1e-6))
        scaled += factor < 1.0
        expect[int(y[i])] += factor * g
    torch.testing.assert_close(out, expect)
    assert clipped == scaled > 0
    # one class only: other blocks stay exactly zero
    only, _ = per_class_weight_sums(logits[y == 1], f[y == 1], y[y == 1], clip)
    assert torch.count_nonzero(only[[0, 2, 3]]) == 0
    # the old joint release's weight block is the same sum when its clip never binds
    joint = per_class_clipped_sums(f, y, w, b, 1e9)
    torch.testing.assert_close(per_class_weight_sums(logits, f, y, 1e9)[0], joint.weight)


# -- layout and ledger -----------------------------------------------------------------------
class _Tiny(nn.Module):
    feature_dim = DIM

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, DIM)
        self.classifier = nn.Linear(DIM, C)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _server(dp: str = "sample", **kw: object) -> FedHProServer:
    torch.manual_seed(0)
    cfg = TrainConfig(rounds_of_hp=5, meta_per_class=3, meta_steps=3, **kw)  # type: ignore[arg-type]
    spec = UploadSpec(dp, 1.0, 100)
    return FedHProServer(_Tiny(), C, torch.device("cpu"), cfg, torch.Generator().manual_seed(1), spec,
                         count_noise_std=1.0)


@pytest.mark.parametrize("classifier", ["fedavg", "meta"])
def test_layout_releases_only_what_the_server_reads(classifier: str) -> None:
    server = _server(classifier=classifier)
    names = server.layout().names()
    assert "feat_grad" not in names
    assert ("cls_grad_w" in names) == (classifier == "meta")
    assert server.layout().block("cls_grad_b").shape == (C, C)
    settings = PrivacySettings("sample", "local", "gaussian", 1.0, 1.2, 1e-5, 0.5, release_noise_ratio=2.0,
                               release_sensitivity=server.upload.release_sensitivity,
                               weight_release=classifier == "meta")
    priv = RunPrivacy(settings, server.layout(), 1, has_release=True)
    events = priv.round_events(0, 1, 1, None, None)
    by_label = {e.label: e for e in events}
    assert set(by_label) == ({"per_class_release", "weight_release"} if classifier == "meta" else {"per_class_release"})
    assert by_label["per_class_release"].noise_multiplier == pytest.approx(2.4)  # type: ignore[attr-defined]
    rel = priv.noise.releases[0]
    assert rel.blocks == ("cls_grad_b", "class_count") and rel.sensitivity == pytest.approx(RESIDUAL_SENSITIVITY)
    assert priv.noise.share_std() == pytest.approx(2.4 * RESIDUAL_SENSITIVITY)
    if classifier == "meta":
        weight = priv.noise.releases[1]
        assert weight.blocks == ("cls_grad_w",) and weight.sensitivity == 1.0
        assert priv.noise.share_std(weight) == pytest.approx(2.4)
    noise = priv.noise.total_noise_std(4)
    assert noise["cls_grad_b"] == pytest.approx(2.4 * RESIDUAL_SENSITIVITY * 2)


# -- honest broadcast ----------------------------------------------------------------------------
def _aggregate(server: FedHProServer, counts: list[float], round_id: int = 1, seed: int = 0) -> Aggregate:
    rng = np.random.default_rng(seed)
    lay = server.layout()
    blocks: dict[str, np.ndarray] = {"cls_grad_b": rng.normal(size=(C, C)), "class_count": np.array(counts)}
    if "cls_grad_w" in lay.names():
        blocks["cls_grad_w"] = rng.normal(size=(C, C, DIM))
    return Aggregate(lay.flatten(blocks), 1, lay, round_id)


def test_unmatched_anchors_are_never_broadcast() -> None:
    server = _server()
    start = server.hyper_prototypes.clone()
    assert server.broadcast(1).extras["hyper_prototypes"] is None and not server.matched
    bc = server.broadcast(1)
    server.apply(_aggregate(server, [0.1, -2.0, 0.5, 1.0]), bc)  # gate: count > 3 sigma = 3
    assert not server.matched and server.hp_round["matched_classes"] == []
    assert server.hp_round["matching_loss_before"] is None
    assert server.broadcast(2).extras["hyper_prototypes"] is None  # nothing learned: nothing sent
    assert torch.equal(server.hyper_prototypes, start)

    server.apply(_aggregate(server, [50.0, 0.0, 40.0, 0.0], 2, seed=1), server.broadcast(2))
    assert server.matched and server.hp_round["matched_classes"] == [0, 2]
    hp = server.hp_round
    assert hp["matching_loss_after"] < hp["matching_loss_before"] and hp["hp_movement"] > 0
    extras = server.broadcast(3).extras
    mask = extras["hp_mask"]
    assert mask is not None and mask.tolist() == [True, False, True, False]
    sent = extras["hyper_prototypes"]
    assert sent is not None and torch.equal(sent[[1, 3]], start[[1, 3]])  # unmatched rows stay the random start...
    assert not torch.equal(sent[[0, 2]], start[[0, 2]])  # ...and are marked inactive; matched rows moved

    matched_value = server.hyper_prototypes[0].clone()
    server.apply(_aggregate(server, [0.0, 0.0, 60.0, 0.0], 3, seed=2), server.broadcast(3))
    assert server.hp_round["matched_classes"] == [2]
    assert torch.equal(server.hyper_prototypes[0], matched_value)  # gated out: keeps its last matched value
    assert server.broadcast(4).extras["hp_mask"].tolist() == [True, False, True, False]  # type: ignore[union-attr]


def test_checkpoint_keeps_the_per_class_mask() -> None:
    server = _server()
    server.apply(_aggregate(server, [50.0, 0.0, 0.0, 0.0]), server.broadcast(1))
    again = _server()
    again.load_state_dict(server.state_dict())
    assert again.hp_matched.tolist() == [True, False, False, False] and again.matched


def test_random_control_never_matches_and_broadcasts_the_start() -> None:
    server = _server(hp_control="random")
    start = server.hyper_prototypes.clone()
    assert server.broadcast(1).extras["hyper_prototypes"] is None
    server.apply(_aggregate(server, [50.0] * C), server.broadcast(1))
    assert not server.matched and server.hp_round["matched_classes"] == [] and server.hp_round["gate_passed"] == C
    extras = server.broadcast(2).extras
    assert extras["hp_mask"] is not None and bool(extras["hp_mask"].all())
    assert torch.equal(extras["hyper_prototypes"], start)  # type: ignore[arg-type]


def test_frozen_control_matches_each_class_once() -> None:
    server = _server(hp_control="frozen")
    server.apply(_aggregate(server, [50.0, 0.0, 0.0, 0.0]), server.broadcast(1))
    first = server.hyper_prototypes.clone()
    server.apply(_aggregate(server, [50.0, 50.0, 0.0, 0.0], 2, seed=3), server.broadcast(2))
    assert server.hp_round["matched_classes"] == [1]
    assert torch.equal(server.hyper_prototypes[0], first[0]) and not torch.equal(server.hyper_prototypes[1], first[1])


def test_meta_classifier_is_not_replaced_when_nothing_matched() -> None:
    server = _server(classifier="meta")
    head = server.model.classifier.weight.detach().clone()  # type: ignore[union-attr]
    bc = server.broadcast(1)
    server.apply(_aggregate(server, [0.0] * C), bc)
    # FedAvg of a zero delta keeps the head; no meta classifier fit to unmatched prototypes replaces it
    torch.testing.assert_close(server.model.classifier.weight.detach(), head)  # type: ignore[union-attr]


# -- the clients' masked losses -------------------------------------------------------------
def test_masked_losses_equal_the_plain_ones_when_all_active_and_ignore_inactive_classes() -> None:
    g = torch.Generator().manual_seed(5)
    f = torch.randn(12, DIM, generator=g, dtype=torch.float64)
    y = torch.arange(12) % C
    means = F.normalize(torch.randn(C, DIM, generator=g, dtype=torch.float64), dim=1)
    every = torch.ones(C, dtype=torch.bool)
    torch.testing.assert_close(hpcl_loss_masked(f, y, means, every, 0.1, 0.3), hpcl_loss(f, y, means, 0.1, 0.3))
    torch.testing.assert_close(hpal_loss_masked(f, y, means, every), hpal_loss(f, y, means))
    active = torch.tensor([True, False, True, False])
    fx = f.clone().requires_grad_(True)
    (hpcl_loss_masked(fx, y, means, active, 0.1) + hpal_loss_masked(fx, y, means, active)).backward()
    assert fx.grad is not None and torch.count_nonzero(fx.grad[~active[y]]) == 0
    assert torch.count_nonzero(fx.grad[active[y]]) > 0
    # an inactive anchor is not in the contrastive denominator: moving it changes nothing
    moved = means.clone()
    moved[1] = -moved[0]
    assert float(hpcl_loss_masked(f, y, moved, active, 0.1)) == pytest.approx(float(hpcl_loss_masked(f, y, means, active, 0.1)))
    none = torch.zeros(C, dtype=torch.bool)
    assert float(hpcl_loss_masked(f, y, means, none)) == 0.0 and float(hpal_loss_masked(f, y, means, none)) == 0.0
    assert math.isfinite(float(hpcl_loss_masked(f, y, means, active, 0.05, 0.2)))


# -- a run's line, audit and report ------------------------------------------------------------
def test_a_run_that_never_matches_says_so(tmp_path: Path) -> None:
    from secure_fed.report.html import render_report
    from secure_fed.run.rundir import read_audit
    from secure_fed.run.trainer import Trainer

    lines: list[str] = []
    cfg = TrainConfig(clients=4, cohort=3, rounds=2, batch_size=64, rounds_of_hp=2, secagg="off", dp="sample",
                      noise_placement="local", mechanism="gaussian", noise_multiplier=1.0, release_noise_ratio=1e4,
                      target_epsilon=None, hardened=False, out=str(tmp_path), run_id="none")
    Trainer(cfg, progress=False, log=lines.append).run()
    assert all(" hp 0/10" in line for line in lines if line.startswith("round"))
    assert "NO class was ever matched" in lines[-1]
    recs = [r for r in read_audit(tmp_path / "none" / "audit.jsonl") if r.get("kind") == "round"]
    assert [r["hp"]["matched_classes"] for r in recs] == [[], []]
    assert recs[0]["hp"]["matching_loss_before"] is None and recs[0]["hp"]["hp_movement"] == 0.0
    page = render_report(tmp_path / "none").read_text()
    assert "No class was ever matched in 2 rounds" in page and "0 of 20 class-rounds" in page
    layout = json.loads((tmp_path / "none" / "layout.json").read_text())
    by_name = {b["name"]: b for b in layout}
    assert by_name["cls_grad_b"]["release"] == "per_class_release" and "cls_grad_w" not in by_name
    assert by_name["class_count"]["sensitivity"] == pytest.approx(RESIDUAL_SENSITIVITY)


def test_a_plaintext_run_matches_and_reports_it(tmp_path: Path) -> None:
    from secure_fed.report.html import render_report
    from secure_fed.run.trainer import Trainer

    lines: list[str] = []
    cfg = TrainConfig(clients=4, cohort=3, rounds=2, batch_size=64, rounds_of_hp=2, secagg="off", dp="off",
                      target_epsilon=None, hardened=False, out=str(tmp_path), run_id="plain")
    Trainer(cfg, progress=False, log=lines.append).run()
    rounds = [line for line in lines if line.startswith("round")]
    assert rounds and all(" hp 0/10" not in line for line in rounds)
    assert "class-rounds matched" in lines[-1]
    page = render_report(tmp_path / "plain").read_text()
    assert "No class was ever matched" not in page and "hp matched" in page
