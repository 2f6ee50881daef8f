"""GFPL (Gaussian class statistics, pseudo-features) on the secure sum.

* The head: the simplex ETF, the dot-regression loss, the dual classifier.
* The moment algebra: the global per-class Gaussian formed from the cohort's summed moments
  is the pooled mean and variance of all the clients' features (exact in plaintext).
* The server: only an Aggregate reaches it; SecAgg/SecAgg+ give the plaintext state within
  the codec bound; the DP gate; calibration touches the head only.
* The uploads and privacy: what each DP unit sends (no exact count under DP); one sample's
  contribution to the moment release stays within the declared sensitivity; the release is
  charged at that bound, checked against Opacus's RDP.
* Runs: every (--secagg, --dp) combination runs; digits learns above chance; a resumed run
  ends where an unbroken one does; the inversion audit reads GFPL's upload.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant as OpacusRDP
from scipy.stats import chisquare

import protocol.server
from crypto.rng import KeystreamRNG
from dp.clipping import moment_release_norm, per_class_moment_sums
from dp.errors import ConfigError as DpConfigError
from protocol.messages import MaskedInput, decode
from secure_fed.aggregation.layout import Aggregate
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.audit.inversion import audit_inversion
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.client import ClientContext, flat_params
from secure_fed.fl.gfpl import (
    DualClassifier,
    GfplServer,
    class_moments,
    dot_regression_loss,
    etf_matrix,
    gaussian_blocks,
    moments_to_gaussians,
)
from secure_fed.fl.models import build_model
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.release import declared_release, moment_sensitivity, upload_spec
from secure_fed.privacy.upload import COUNT_SHARE, UploadSpec
from secure_fed.run.rundir import read_audit
from secure_fed.run.trainer import Trainer

C, DIM = 4, 6
SMALL = dict(algorithm="gfpl", clients=6, cohort=6, rounds=1, batch_size=32, dropout=0.0, hardened=False, seed=3)


def _trainer(tmp: Path | None = None, **kw: Any) -> Trainer:
    cfg = TrainConfig(**{**SMALL, **kw, "out": str(tmp or "unused")})
    return Trainer(cfg, progress=False, log=lambda s: None, write_outputs=tmp is not None)


# -- the head ----------------------------------------------------------------------------------
def test_etf_is_a_simplex_frame_and_seeded() -> None:
    m = etf_matrix(C, 9, seed=4)
    gram = m.double() @ m.double().T
    want = torch.full((C, C), -1.0 / (C - 1), dtype=torch.float64) + torch.eye(C, dtype=torch.float64) * (1 + 1.0 / (C - 1))
    torch.testing.assert_close(gram, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(m, etf_matrix(C, 9, seed=4))
    assert not torch.allclose(m, etf_matrix(C, 9, seed=5))
    with pytest.raises(ConfigError, match="--gfpl-proj-dim"):
        etf_matrix(C, C - 1, seed=0)


def test_dot_regression_is_zero_on_the_etf_and_per_sample() -> None:
    etf = etf_matrix(C, 8, seed=1)
    y = torch.tensor([0, 3, 1])
    assert float(dot_regression_loss(etf[y], etf, y)) == pytest.approx(0.0, abs=1e-7)
    h = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    want = torch.stack([0.5 * (1 - h[i] @ etf[y[i]]) ** 2 for i in range(3)]).mean()
    torch.testing.assert_close(dot_regression_loss(h, etf, y), want)


def test_the_dual_classifier_reads_a_unit_projection() -> None:
    head = DualClassifier(DIM, 8, C, etf_matrix(C, 8, seed=0))
    f = torch.rand(5, DIM)
    torch.testing.assert_close(head.project(f).norm(dim=1), torch.ones(5))
    torch.testing.assert_close(head(f), head.linear(head.project(f)))
    assert "etf" in head.state_dict() and all(p is not head.etf for p in head.parameters())  # a buffer, never trained


# -- the moment algebra ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 6))
def test_summed_moments_give_the_pooled_gaussian(seed: int, clients: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(clients * 3, 60))
    f = torch.as_tensor(rng.normal(2.0, 3.0, (n, DIM)) * rng.uniform(0.1, 5.0, DIM))
    y = torch.as_tensor(rng.integers(0, C - 1, n))  # class C - 1 absent everywhere
    owner = rng.integers(0, clients, n)
    total = [torch.zeros(C, DIM, dtype=torch.float64), torch.zeros(C, DIM, dtype=torch.float64),
             torch.zeros(C, dtype=torch.float64)]
    for k in range(clients):
        mine = torch.as_tensor(owner == k)
        for acc, part in zip(total, class_moments(f[mine], y[mine], C), strict=True):
            acc += part
    g = moments_to_gaussians(*total)
    for c in range(C):
        rows = f[y == c].numpy()
        if rows.shape[0] == 0:
            assert not bool(g.active[c])
            continue
        assert bool(g.active[c]) and float(g.weight[c]) == rows.shape[0]
        np.testing.assert_allclose(g.mean[c].numpy(), rows.mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(g.var[c].numpy(), np.maximum(rows.var(0), 1e-6), rtol=1e-7, atol=1e-9)


def test_the_server_forms_the_pooled_gaussian_from_the_aggregate_only() -> None:
    server = _server("off")
    g = torch.Generator().manual_seed(2)
    parts = [(torch.rand(12, DIM, generator=g, dtype=torch.float64) * 4, torch.randint(0, C, (12,), generator=g))
             for _ in range(3)]
    sums = [class_moments(f, y, C) for f, y in parts]
    agg = _aggregate(server, sum(s[0] for s in sums).numpy(), sum(s[1] for s in sums).numpy(),  # type: ignore[union-attr]
                     sum(s[2] for s in sums).numpy(), clients=3)  # type: ignore[union-attr]
    server.apply(agg, server.broadcast(1))
    assert server.gaussians is not None
    f = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    for c in range(C):
        rows = f[y == c]
        torch.testing.assert_close(server.gaussians.mean[c], rows.mean(0), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(server.gaussians.var[c], rows.var(0, unbiased=False).clamp_min(1e-6), rtol=1e-7, atol=1e-9)


# -- the server --------------------------------------------------------------------------------------
def _head_model() -> torch.nn.Module:
    model = torch.nn.Module()
    model.feature_dim = DIM  # type: ignore[assignment]
    model.classifier = DualClassifier(DIM, 8, C, etf_matrix(C, 8, seed=0))
    return model


def _server(dp: str, noise: float = 0.0, **kw: Any) -> GfplServer:
    cfg = TrainConfig(algorithm="gfpl", dp=dp, noise_multiplier=1.0 if dp != "off" else None, target_epsilon=None, **kw)
    spec = UploadSpec(dp, 1.0, 100, release_sensitivity=moment_sensitivity())
    return GfplServer(_head_model(), C, torch.device("cpu"), cfg, torch.Generator().manual_seed(0), spec, count_noise_std=noise)


def _aggregate(server: GfplServer, sums: np.ndarray, squares: np.ndarray, counts: np.ndarray, clients: int) -> Aggregate:
    layout = server.layout()
    values = {"proto_sum": sums, "feat_sq": squares, "class_count": counts, "delta": np.zeros(server.num_params)}
    if "n" in layout.names():
        values["n"] = np.array([1.0])
    return Aggregate(layout.flatten(values), clients, layout, 1)


def test_the_server_refuses_a_model_without_the_dual_classifier() -> None:
    model = build_model("digits", 10, (1, 8, 8))
    with pytest.raises(ConfigError, match="dual classifier"):
        GfplServer(model, 10, torch.device("cpu"), TrainConfig(algorithm="gfpl", dp="off", target_epsilon=None),
                   torch.Generator(), UploadSpec("off", 1.0, 100))


def test_dp_gate_uses_a_class_only_above_three_noise_sds() -> None:
    server = _server("sample", noise=2.0, gfpl_clip=4.0)
    cc = server.upload.count_coordinate
    # gate: 3 * 2.0 * sqrt(4 summed) = 12 on the summed count block
    counts = np.array([13.0, 11.0, -20.0, 12.5])
    sums = np.full((C, DIM), 0.5) * (counts / cc)[:, None]  # unit-ball mean 0.5 per entry
    squares = np.full((C, DIM), 0.5) * (counts / cc)[:, None]
    stats = server.apply(_aggregate(server, sums, squares, counts, clients=4), server.broadcast(1))
    g = server.gaussians
    assert g is not None and g.active.tolist() == [True, False, False, True] and stats["active_classes"] == 2.0
    # the count block is read in count-coordinate units, the moments scaled back by --gfpl-clip
    torch.testing.assert_close(g.mean[0], torch.full((DIM,), 0.5 * 4.0, dtype=torch.float64))
    # the variance: Q/W - mean^2 plus the squared mean's noise bias (sigma / W)^2, sigma =
    # 2.0 * sqrt(4) on each summed entry, pooled over the active classes and coordinates
    w = torch.tensor([13.0, 12.5], dtype=torch.float64) / cc
    pooled = float((0.25 + (4.0 / w) ** 2).mean()) * 16.0
    torch.testing.assert_close(g.var[[0, 3]], torch.full((2, DIM), pooled, dtype=torch.float64))


def test_under_dp_a_class_whose_mean_is_mostly_noise_is_not_used() -> None:
    sigma = 2.0
    w = torch.full((C,), 50.0, dtype=torch.float64)
    s = torch.zeros(C, DIM, dtype=torch.float64)
    noise_energy = DIM * sigma ** 2
    s[0, 0] = math.sqrt(2.0 * noise_energy) * 1.01  # signal energy just above the noise energy
    s[1, 0] = math.sqrt(2.0 * noise_energy) * 0.99  # just below
    s[2] = 30.0
    q = s * s / w[:, None] + 0.1 * w[:, None]
    g = moments_to_gaussians(s, q, w, noise_std=sigma)
    assert g.active.tolist() == [True, False, True, False]
    assert moments_to_gaussians(s, q, w, noise_std=sigma, min_snr=0.0).active.tolist() == [True, True, True, False]
    plain = moments_to_gaussians(s, q, w)  # without noise: every class with a count is used
    assert plain.active.tolist() == [True, True, True, True]
    torch.testing.assert_close(plain.var[2], torch.full((DIM,), 0.1, dtype=torch.float64))


def test_calibration_retrains_the_head_only_and_only_on_schedule() -> None:
    server = _server("off", gfpl_start=2, gfpl_interval=2, gfpl_pseudo=20)
    sums, squares, counts = np.ones((C, DIM)) * 3, np.ones((C, DIM)) * 4, np.full(C, 3.0)
    head_before = flat_params(server.model).clone()
    etf = server.model.classifier.etf.clone()  # type: ignore[union-attr]
    done = []
    for r in (1, 2, 3, 4):
        stats = server.apply(Aggregate(_aggregate(server, sums, squares, counts, 2).vector, 2, server.layout(), r),
                             server.broadcast(r))
        done.append(stats["calibrated"])
    assert done == [0.0, 1.0, 0.0, 1.0] and server.calibrated_rounds == 2
    assert not torch.equal(flat_params(server.model), head_before)  # the delta is zero: only calibration moved it
    torch.testing.assert_close(server.model.classifier.etf, etf)  # type: ignore[union-attr]


# -- uploads ---------------------------------------------------------------------------------------
def _ctx(dp: str, clip: float = 2.0) -> ClientContext:
    cfg = TrainConfig(algorithm="gfpl", dp=dp, gfpl_clip=clip, noise_multiplier=1.0 if dp != "off" else None,
                      target_epsilon=None)
    spec = upload_spec(cfg, 100)
    return ClientContext(cfg, spec, C, torch.Generator().manual_seed(0), KeystreamRNG.from_seed(0, "t"))


@pytest.mark.parametrize("dp", ["off", "sample", "client"])
def test_each_unit_uploads_what_it_may(dp: str) -> None:
    g = torch.Generator().manual_seed(4)
    f = torch.rand(30, DIM, generator=g) * 4
    y = torch.tensor([0] * 12 + [2] * 18)
    ctx = _ctx(dp, clip=2.0)
    out = gaussian_blocks(f, y, ctx)
    assert set(out) == {"proto_sum", "feat_sq", "class_count"}
    for name in out:
        assert np.all(out[name][[1, 3]] == 0)  # absent classes: zero blocks
    if dp == "off":
        np.testing.assert_allclose(out["class_count"], [12, 0, 18, 0])
        np.testing.assert_allclose(out["proto_sum"][0], f[:12].double().sum(0).numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["feat_sq"][2], (f[12:].double() ** 2).sum(0).numpy(), rtol=1e-12)
    elif dp == "sample":
        cc = ctx.spec.count_coordinate
        assert cc == pytest.approx(COUNT_SHARE * moment_sensitivity())
        kept = out["class_count"] / cc  # a Poisson subsample, in count-coordinate units: never an exact count
        np.testing.assert_allclose(kept, np.round(kept), atol=1e-9)
        assert 0 < kept.sum() < 30
        assert np.all(np.linalg.norm(out["proto_sum"], axis=1) <= kept + 1e-9)  # each kept sample: norm <= 1
        assert np.all(out["feat_sq"].sum(1) <= kept + 1e-9)  # and squares summing to <= 1
    else:
        np.testing.assert_allclose(out["class_count"], [12 / 30, 0, 18 / 30, 0])  # fractions of n_k
        assert np.linalg.norm(out["proto_sum"], axis=1).sum() <= 1 + 1e-9  # one sample's worth in all


# -- privacy ---------------------------------------------------------------------------------------
def _contribution(f: torch.Tensor, label: int, clip: float, count: float) -> float:
    s = per_class_moment_sums(f[None, :], torch.tensor([label]), C, clip, count)
    return float(torch.linalg.vector_norm(s.flat()))


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=DIM, max_size=DIM), st.integers(0, C - 1), st.floats(1e-3, 1e3),
       st.sampled_from([torch.float32, torch.float64]))
def test_one_samples_moment_contribution_never_exceeds_the_declared_bound(row: list[float], label: int, clip: float,
                                                                         dtype: torch.dtype) -> None:
    sens = moment_sensitivity()
    count = COUNT_SHARE * sens
    assert moment_release_norm(count) == pytest.approx(sens)
    f = torch.tensor(row, dtype=dtype)
    assert _contribution(f, label, clip, count) <= sens
    s = per_class_moment_sums(f[None, :], torch.tensor([label]), C, clip, count)
    assert float(s.feature.norm()) <= 1.0 and float(s.square.norm()) <= 1.0
    assert float(s.count[label]) == count  # the count coordinate is never scaled
    norm = float(torch.linalg.vector_norm(f.double()))
    if norm < clip * 0.5:  # an unclipped feature is only rescaled
        torch.testing.assert_close(s.feature[label], f.double() / clip, rtol=1e-6, atol=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1e-30, 1.0, 3.0e38, -3.0e38, 1e6])
def test_adversarial_features_move_the_release_by_at_most_the_bound(dtype: torch.dtype, value: float) -> None:
    sens = moment_sensitivity()
    count = COUNT_SHARE * sens
    f = torch.full((3, DIM), value, dtype=dtype)
    f[1, 0] = -value
    y = torch.tensor([2, 2, 0])
    full = per_class_moment_sums(f, y, C, 0.7, count).flat()
    for i in range(3):
        keep = [j for j in range(3) if j != i]
        removed = per_class_moment_sums(f[keep], y[keep], C, 0.7, count).flat()
        assert float(torch.linalg.vector_norm(full - removed)) <= sens


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(DpConfigError, match="NaN"):
        per_class_moment_sums(torch.full((2, DIM), float("nan")), torch.tensor([0, 1]), C, 1.0)
    with pytest.raises(DpConfigError, match="labels"):
        per_class_moment_sums(torch.ones(2, DIM), torch.tensor([0, C]), C, 1.0)
    with pytest.raises(DpConfigError, match="clip"):
        per_class_moment_sums(torch.ones(2, DIM), torch.tensor([0, 1]), C, 0.0)
    for flag, kw in (("--gfpl-clip", dict(gfpl_clip=0.0)), ("--gfpl-proj-dim", dict(gfpl_proj_dim=1)),
                     ("--gfpl-start", dict(gfpl_start=0)), ("--gfpl-pseudo", dict(gfpl_pseudo=0)),
                     ("--gfpl-calib-momentum", dict(gfpl_calib_momentum=1.0)), ("--gfpl-lambda", dict(gfpl_lambda=-1.0)),
                     ("--gfpl-min-snr", dict(gfpl_min_snr=-0.5))):
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(algorithm="gfpl", **kw)  # type: ignore[arg-type]


def test_the_release_is_declared_with_all_three_blocks() -> None:
    decl = declared_release(TrainConfig(algorithm="gfpl", gfpl_clip=7.0))
    assert decl is not None
    assert decl.blocks == ("proto_sum", "feat_sq", "class_count")
    assert decl.sensitivity == pytest.approx(math.sqrt(2 / (1 - COUNT_SHARE ** 2)))
    assert decl.count_coordinate == pytest.approx(COUNT_SHARE * decl.sensitivity)
    assert TrainConfig(algorithm="gfpl").splits_budget


def test_sample_dp_ledger_matches_opacus_and_the_declared_bound(tmp_path: Path) -> None:
    z, ratio = 1.2, 3.0
    t = _trainer(tmp_path, secagg="off", dp="sample", mechanism="gaussian", noise_placement="local",
                 noise_multiplier=z, target_epsilon=None, release_noise_ratio=ratio, rounds=2, run_id="led")
    assert "n" not in t.layout.names()
    t.run()
    assert t.privacy is not None
    sens = moment_sensitivity()
    assert t.privacy.noise.share_std() == pytest.approx(ratio * z * sens)  # local placement: all of it
    (rel,) = t.privacy.noise.releases
    assert rel.blocks == ("proto_sum", "feat_sq", "class_count") and rel.sensitivity == pytest.approx(sens)
    rec = next(r for r in read_audit(tmp_path / "led" / "audit.jsonl") if r["kind"] == "round")
    assert {e["label"] for e in rec["events"]} == {"per_class_release", "dpsgd"}
    layout = {b["name"]: b for b in json.loads((tmp_path / "led" / "layout.json").read_text())}
    assert layout["feat_sq"]["sensitivity"] == pytest.approx(sens) and "release" not in layout["delta"]
    for subject in t.ledger.subjects():
        ref = OpacusRDP()
        for e in t.ledger.events_for(subject):
            if e.label == "per_class_release":
                assert e.noise_multiplier == pytest.approx(ratio * z)  # type: ignore[attr-defined]
                assert e.sample_rate == t.cfg.release_rate  # type: ignore[attr-defined]
            else:
                assert e.label == "dpsgd" and e.noise_multiplier == pytest.approx(z)  # type: ignore[attr-defined]
            for _ in range(e.steps):  # type: ignore[attr-defined]
                ref.step(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate)  # type: ignore[attr-defined]
        assert t.ledger.epsilon(t.cfg.delta, subject) == pytest.approx(ref.get_epsilon(t.cfg.delta), rel=1e-6)


def test_exact_counts_never_reach_the_server_under_dp() -> None:
    t = _trainer(None, secagg="secagg+", dp="sample", noise_multiplier=1.0, target_epsilon=None)
    seen: list[Aggregate] = []
    real = FedServer.apply

    def record(self: FedServer, agg: Aggregate, bc: Broadcast) -> dict[str, float]:
        seen.append(agg)
        return real(self, agg, bc)

    FedServer.apply = record  # type: ignore[method-assign]
    try:
        t.run()
    finally:
        FedServer.apply = real  # type: ignore[method-assign]
    (agg,) = seen
    counts = agg.block("class_count") / t.spec.count_coordinate
    assert not np.allclose(counts, np.round(counts), atol=1e-3)  # noisy, not integer counts


# -- the secure sum --------------------------------------------------------------------------------
def test_plaintext_and_secure_aggregators_give_the_same_server_state() -> None:
    out = {}
    for mode in ("off", "secagg", "secagg+"):
        t = _trainer(None, secagg=mode, dp="off", target_epsilon=None, gfpl_start=1)
        t.run()
        assert isinstance(t.server, GfplServer) and t.server.gaussians is not None
        assert t.server.calibrated_rounds == 1
        g = t.server.gaussians
        out[mode] = (g.mean.clone(), g.var.clone(), flat_params(t.server.model))
    # Aggregates differ by at most the codec bound; the Gaussians are the summed moments
    # over the summed counts, the model the summed deltas plus a calibration on samples
    # drawn with the same seed from those Gaussians.
    for mode in ("secagg", "secagg+"):
        for a, b in zip(out[mode], out["off"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_server_receives_masked_bytes_and_one_aggregate(dp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []
    calls: list[tuple[Any, ...]] = []
    plain: dict[int, np.ndarray] = {}
    encoded: dict[int, np.ndarray] = {}
    real_receive, real_apply = protocol.server.SecAggServer.receive, GfplServer.apply
    real_encode, real_work = LayoutCodec.encode, Trainer.client_work

    def rec_receive(self, data):  # type: ignore[no-untyped-def]
        received.append(bytes(data))
        return real_receive(self, data)

    def rec_apply(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((args, kwargs))
        return real_apply(self, *args, **kwargs)

    def rec_work(self, bc, cid, side, final):  # type: ignore[no-untyped-def]
        plain[cid] = real_work(self, bc, cid, side, final)
        return plain[cid]

    def rec_encode(self, vector, rng):  # type: ignore[no-untyped-def]
        words = real_encode(self, vector, rng)
        for cid, v in plain.items():
            if v is vector:
                encoded[cid] = words
        return words

    monkeypatch.setattr(protocol.server.SecAggServer, "receive", rec_receive)
    monkeypatch.setattr(GfplServer, "apply", rec_apply)
    monkeypatch.setattr(LayoutCodec, "encode", rec_encode)
    monkeypatch.setattr(Trainer, "client_work", rec_work)
    _trainer(None, secagg="secagg+", dp=dp, noise_multiplier=2.0 if dp != "off" else None, target_epsilon=None).run()

    (call,) = calls
    args, kwargs = call
    assert not kwargs and len(args) == 2
    agg, bc = args
    assert isinstance(agg, Aggregate) and isinstance(bc, Broadcast)  # the server's only client input: the sum
    assert agg.count == 6 and sorted(agg.meta["summed"]) == sorted(plain)
    masked = [m for m in map(decode, received) if isinstance(m, MaskedInput)]
    assert len(masked) == 6
    for m in masked:
        y = m.vector()
        assert np.mean(y == encoded[m.sender]) < 1e-3
        counts = np.bincount((y >> np.uint32(24)).astype(np.int64), minlength=256)
        assert chisquare(counts).pvalue > 1e-6
        for v in plain.values():
            assert all(v[:8].astype("<f8").tobytes() not in data for data in received)
    total = sum(plain[c] for c in agg.meta["summed"])
    if dp == "off":
        assert np.abs(agg.vector - total).max() <= max(agg.meta["error_bound"].values())
    for v in plain.values():
        assert not np.allclose(agg.vector, v)


# -- runs ------------------------------------------------------------------------------------------
COMBOS = [(s, d) for s in ("off", "secagg", "secagg+") for d in ("off", "sample", "client")]


@pytest.mark.parametrize(("secagg", "dp"), COMBOS)
def test_every_secagg_and_dp_combination_runs(secagg: str, dp: str) -> None:
    kw: dict[str, Any] = dict(secagg=secagg, dp=dp, clients=4, cohort=4, gfpl_start=1)
    if dp != "off":
        kw.update(noise_multiplier=1.0, target_epsilon=None, noise_placement="local" if secagg == "off" else "distributed")
    else:
        kw.update(target_epsilon=None)
    t = _trainer(None, **kw)
    t.run()
    rec = t.history[-1]
    assert not rec.get("aborted") and 0.0 <= rec["accuracy"] <= 1.0
    labels = {e.label for e in t.ledger.events}
    assert labels == {"off": set(), "sample": {"per_class_release", "dpsgd"}, "client": {"client_update"}}[dp]


def test_gfpl_learns_above_chance_on_digits() -> None:
    t = _trainer(None, secagg="off", dp="off", target_epsilon=None, clients=6, cohort=6, rounds=5, seed=0)
    t.run()
    assert t.history[-1]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert isinstance(t.server, GfplServer) and t.server.calibrated_rounds == 4  # rounds 2..5


def test_a_resumed_run_ends_where_an_unbroken_one_does(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(secagg="off", dp="off", target_epsilon=None, clients=4, cohort=4, rounds=3, run_id="res")
    first = _trainer(tmp_path, **kw)
    first.run(until=2)
    second = Trainer(first.cfg, progress=False, log=lambda s: None, run_dir=tmp_path / "res")
    second.resume_from(tmp_path / "res")
    second.run()
    full = _trainer(None, **kw)
    full.run()
    assert isinstance(second.server, GfplServer) and isinstance(full.server, GfplServer)
    assert second.server.calibrated_rounds == full.server.calibrated_rounds == 2
    torch.testing.assert_close(flat_params(second.server.model), flat_params(full.server.model))
    assert second.history[-1]["accuracy"] == full.history[-1]["accuracy"]


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_inversion_audit_runs_on_a_gfpl_run(dp: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(secagg="secagg+", dp=dp, clients=4, cohort=4, run_id=f"inv-{dp}", seed=1)
    kw.update(noise_multiplier=20.0, target_epsilon=None) if dp == "sample" else kw.update(target_epsilon=None)
    _trainer(tmp_path, **kw).run()
    res = audit_inversion(tmp_path / f"inv-{dp}", seed=0, points="first", progress=False)
    json.dumps(res, allow_nan=False)
    assert res["summary"]["applicable"] is True
    up = res["raw"]["points"][0]["views"]["upload"]["pooled"]
    if dp == "off":  # the summed features over the exact count are the class means of the broadcast model
        assert up["cosine_mean"] >= 0.999 and up["count_hit_rate"] == 1.0
        assert up["label_precision"] == 1.0 and up["label_recall"] == 1.0
        assert res["passed"] is True  # the sum gives no client's means beyond the population's
    else:
        assert res["raw"]["points"][0]["noise_std_sum"] > 0
        assert up["small_count_hit_rate"] < 0.5


# -- what the round line and the audit record say the server did ---------------------------------
def test_round_line_and_audit_say_whether_calibration_ran(tmp_path: Path) -> None:
    from secure_fed.run.records import round_line

    # Plaintext: every held class forms a Gaussian; round 1 is before --gfpl-start, round 2 calibrates.
    tr = _trainer(tmp_path / "plain", rounds=2, secagg="off", dp="off", target_epsilon=None)
    tr.run()
    first, second = (r["server_step"] for r in tr.history)
    assert first["label"] == "gaussians" and first["num_classes"] == tr.num_classes
    assert first["calibration_due"] is False and first["calibrated"] is False
    assert second["calibration_due"] is True and second["calibrated"] is True and second["active"] >= 1
    line = round_line(tr.history[1], 2, secure=False)
    assert f"gaussians {second['active']}/{tr.num_classes}  calibrated" in line
    rounds = [a for a in read_audit(tr.run_dir / "audit.jsonl") if a["kind"] == "round"]
    assert [a["server_step"] for a in rounds] == [first, second]
    plain_dir = tr.run_dir
    tr.close()
    # Client-level DP at this cohort: the noise on the summed count fractions keeps every class
    # under the gate, so a calibration that was due is reported as skipped, never as run.
    tr = _trainer(tmp_path / "dp", rounds=2, dp="client", target_epsilon=8.0)
    tr.run()
    step = tr.history[1]["server_step"]
    assert step["calibration_due"] is True
    assert step["calibrated"] is (step["active"] > 0)
    line = round_line(tr.history[1], 2, secure=True)
    assert ("calibration skipped" in line) is (step["active"] == 0)
    tr.close()
    # report.html says the same: the summary row, the rounds' column, and a banner at the
    # top when the server read nothing (seeded run: no class clears the gate in either round)
    from secure_fed.report.html import render_report

    assert [r["server_step"]["active"] for r in tr.history] == [0, 0]
    page = render_report(tr.run_dir).read_text()
    assert "The server read no class in 2 rounds" in page and "no calibration on pseudo-features ran" in page
    assert "gaussians: 0 of 20 class-rounds read; calibrated in 0 of 1 due rounds" in page
    assert "calibration skipped" in page
    page = render_report(plain_dir).read_text()
    assert "The server read no class" not in page and "The calibration never ran" not in page
    assert f"gaussians: {first['active'] + second['active']} of 20 class-rounds read; calibrated in 1 of 1 due rounds" in page
    assert f"gaussians {second['active']}/10 <span class='note'>calibrated</span>" in page
