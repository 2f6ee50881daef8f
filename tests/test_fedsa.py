"""FedSA (semantic anchors) on the secure sum: losses, anchors, uploads, privacy, audits.

* The losses: RMCL is the margin CE of the cosines to the anchors, one sample at a time
  (what DP-SGD needs); CC is the classifier's CE on the anchors.
* The server: the anchors start orthonormal, move by EMA only for gated classes, and only
  an Aggregate reaches the server; SecAgg/SecAgg+ give the plaintext state within the codec.
* The uploads: what each DP unit sends (no exact count under DP).
* Privacy: the release is charged at its declared bound, checked against Opacus's RDP.
* Runs: every (--secagg, --dp) combination runs; digits learns above chance; the inversion
  audit reads the prototype release.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant as OpacusRDP
from scipy.stats import chisquare

import protocol.server
from crypto.rng import KeystreamRNG
from protocol.messages import MaskedInput, decode
from secure_fed.aggregation.layout import Aggregate, VectorLayout
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.audit.inversion import AttackerKnowledge, audit_inversion, invert
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.fedsa import (
    FedSAServer,
    calibration_loss,
    ema_anchors,
    init_anchors,
    prototype_blocks,
    rmcl_loss,
)
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.upload import COUNT_SHARE, UploadSpec, prototype_sensitivity
from secure_fed.run.rundir import read_audit
from secure_fed.run.trainer import Trainer

C, DIM = 4, 6
SMALL = dict(algorithm="fedsa", clients=6, cohort=6, rounds=1, batch_size=32, dropout=0.0, hardened=False, seed=3)


def _trainer(tmp: Path | None = None, **kw: Any) -> Trainer:
    cfg = TrainConfig(**{**SMALL, **kw, "out": str(tmp or "unused")})
    return Trainer(cfg, progress=False, log=lambda s: None, write_outputs=tmp is not None)


# -- losses ------------------------------------------------------------------------------------
def test_rmcl_is_the_margin_softmax_of_cosines_and_separable_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    f, a = torch.randn(5, DIM, generator=g), torch.randn(C, DIM, generator=g)
    y = torch.tensor([0, 1, 2, 3, 1])
    tau, m = 0.3, 0.2
    got = rmcl_loss(f, y, a, tau=tau, margin=m)
    want = []
    for i in range(5):
        cos = torch.tensor([float(f[i] @ a[c] / (f[i].norm() * a[c].norm())) for c in range(C)])
        cos[y[i]] -= m
        want.append(-torch.log_softmax(cos / tau, 0)[y[i]])
    torch.testing.assert_close(got, torch.stack(want).mean())
    # each sample's term reads only that sample: the batch loss is the mean of the singletons
    singles = torch.stack([rmcl_loss(f[i:i + 1], y[i:i + 1], a, tau=tau, margin=m) for i in range(5)])
    torch.testing.assert_close(got, singles.mean())
    # a larger margin costs more; a zero feature is finite (cosine 0 to every anchor)
    assert float(rmcl_loss(f, y, a, tau=tau, margin=0.5)) > float(got)
    z = rmcl_loss(torch.zeros(1, DIM), torch.tensor([2]), a, tau=tau, margin=m)
    assert math.isfinite(float(z))


def test_calibration_is_the_classifier_ce_on_the_anchors() -> None:
    head = torch.nn.Linear(DIM, C)
    a = init_anchors(C, DIM, torch.Generator().manual_seed(1))
    want = F.cross_entropy(head(a), torch.arange(C))
    torch.testing.assert_close(calibration_loss(head, a), want)


# -- anchors and the server -------------------------------------------------------------------------
def test_anchors_start_orthonormal_and_seeded() -> None:
    a = init_anchors(C, DIM, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a @ a.T, torch.eye(C), atol=1e-6, rtol=0)
    torch.testing.assert_close(a, init_anchors(C, DIM, torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, init_anchors(C, DIM, torch.Generator().manual_seed(6)))
    many = init_anchors(10, 3, torch.Generator().manual_seed(0))  # more classes than dims: unit, not orthogonal
    torch.testing.assert_close(many.norm(dim=1), torch.ones(10))
    with pytest.raises(ConfigError):
        init_anchors(1, DIM, torch.Generator())


def test_ema_moves_only_active_classes_toward_the_prototype_direction() -> None:
    a = init_anchors(C, DIM, torch.Generator().manual_seed(2))
    sums = torch.zeros(C, DIM)
    sums[0] = 50.0 * a[1]  # class 0's prototype points at anchor 1 (scale does not matter)
    sums[1] = torch.randn(DIM)
    active = torch.tensor([True, False, True, True])  # class 1 gated out; classes 2, 3 have zero sums
    out = ema_anchors(a, sums, active, momentum=0.75)
    want0 = F.normalize(0.75 * a[0] + 0.25 * a[1], dim=0)
    torch.testing.assert_close(out[0], want0)
    torch.testing.assert_close(out[1:], a[1:])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(C))
    torch.testing.assert_close(ema_anchors(a, sums, active, momentum=0.0)[0], a[1])


def _server(dp: str, noise: float = 0.0) -> FedSAServer:
    cfg = TrainConfig(algorithm="fedsa", dp=dp, noise_multiplier=1.0 if dp != "off" else None, target_epsilon=None)
    model = torch.nn.Module()
    model.feature_dim = DIM  # type: ignore[assignment]
    model.classifier = torch.nn.Linear(DIM, C)
    spec = UploadSpec(dp, 1.0, 100, release_sensitivity=prototype_sensitivity(1.0))
    return FedSAServer(model, C, torch.device("cpu"), cfg, torch.Generator().manual_seed(0), spec, count_noise_std=noise)


def _aggregate(server: FedSAServer, sums: np.ndarray, counts: np.ndarray, clients: int) -> Aggregate:
    layout = server.layout()
    values = {"proto_sum": sums, "class_count": counts, "delta": np.zeros(server.num_params)}
    if "n" in layout.names():
        values["n"] = np.array([1.0])
    return Aggregate(layout.flatten(values), clients, layout, 1)


def test_dp_gate_moves_an_anchor_only_above_three_noise_sds() -> None:
    server = _server("sample", noise=2.0)
    sums = np.ones((C, DIM))
    # gate: 3 * 2.0 * sqrt(4 summed) = 12 on the summed count coordinate
    agg = _aggregate(server, sums, np.array([13.0, 11.0, -20.0, 12.5]), clients=4)
    before = server.anchors.clone()
    stats = server.apply(agg, server.broadcast(1))
    moved = (server.anchors - before).norm(dim=1) > 0
    assert moved.tolist() == [True, False, False, True] and stats["active_classes"] == 2.0
    assert server.updated.tolist() == [True, False, False, True]
    plain = _server("off")
    plain.apply(_aggregate(plain, sums, np.array([1.0, 0.0, 3.0, 0.0]), clients=2), plain.broadcast(1))
    assert plain.updated.tolist() == [True, False, True, False]


def test_checkpoint_keeps_the_anchors() -> None:
    server = _server("off")
    server.apply(_aggregate(server, np.ones((C, DIM)), np.ones(C), clients=2), server.broadcast(1))
    state = server.state_dict()
    fresh = _server("off")
    assert not torch.allclose(fresh.anchors, server.anchors)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.anchors, server.anchors)
    assert fresh.updated.tolist() == server.updated.tolist()
    torch.testing.assert_close(fresh.broadcast(2).extras["anchors"], server.anchors)  # type: ignore[arg-type]


# -- uploads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dp", ["off", "sample", "client"])
def test_each_unit_uploads_what_it_may(dp: str) -> None:
    g = torch.Generator().manual_seed(4)
    f = torch.rand(30, DIM, generator=g) * 4
    y = torch.tensor([0] * 12 + [2] * 18)
    clip = 0.5
    spec = UploadSpec(dp, 1.0, 100, release_sensitivity=prototype_sensitivity(clip), proto_clip=clip)
    out = prototype_blocks(f, y, C, spec, KeystreamRNG.from_seed(0, "t"), release_rate=0.5)
    assert set(out) == {"proto_sum", "class_count"}
    assert np.all(out["proto_sum"][[1, 3]] == 0) and np.all(out["class_count"][[1, 3]] == 0)  # absent classes: zero blocks
    if dp == "off":
        np.testing.assert_allclose(out["class_count"], [12, 0, 18, 0])
        np.testing.assert_allclose(out["proto_sum"][0], f[:12].sum(0).double().numpy(), rtol=1e-6)
    elif dp == "sample":
        cc = spec.count_coordinate
        assert cc == pytest.approx(COUNT_SHARE * prototype_sensitivity(clip))
        kept = out["class_count"] / cc  # a Poisson subsample, counted in count-coordinate units
        np.testing.assert_allclose(kept, np.round(kept), atol=1e-5)
        assert 0 < kept.sum() < 30
        norms = np.linalg.norm(out["proto_sum"], axis=1)
        assert np.all(norms <= kept * clip + 1e-5)  # each kept sample adds at most proto_clip
    else:
        np.testing.assert_allclose(out["class_count"], [1, 0, 1, 0])  # holder indicators
        assert np.linalg.norm(out["proto_sum"], axis=1).max() <= clip + 1e-6  # clipped, over n_k


# -- privacy --------------------------------------------------------------------------------------
def test_sample_dp_ledger_matches_opacus_and_the_declared_bound(tmp_path: Path) -> None:
    z, ratio, clip = 1.2, 3.0, 0.8
    t = _trainer(tmp_path, secagg="off", dp="sample", mechanism="gaussian", noise_placement="local",
                 noise_multiplier=z, target_epsilon=None, release_noise_ratio=ratio, proto_clip=clip, rounds=2,
                 run_id="led")
    assert "n" not in t.layout.names() and "holders" not in t.layout.names()
    t.run()
    assert t.privacy is not None
    sens = prototype_sensitivity(clip)
    assert sens == pytest.approx(clip / math.sqrt(1 - COUNT_SHARE ** 2))
    assert t.privacy.noise.share_std() == pytest.approx(ratio * z * sens)  # local placement: all of it
    rec = next(r for r in read_audit(tmp_path / "led" / "audit.jsonl") if r["kind"] == "round")
    assert {e["label"] for e in rec["events"]} == {"per_class_release", "dpsgd"}
    layout = {b["name"]: b for b in json.loads((tmp_path / "led" / "layout.json").read_text())}
    assert layout["proto_sum"]["sensitivity"] == pytest.approx(sens)
    for subject in t.ledger.subjects():
        events = t.ledger.events_for(subject)
        ref = OpacusRDP()
        for e in events:
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
        t = _trainer(None, secagg=mode, dp="off", target_epsilon=None)
        t.run()
        assert isinstance(t.server, FedSAServer)
        out[mode] = (t.server.anchors.clone(), torch.cat([p.detach().flatten() for p in t.server.model.parameters()]))
    # Aggregates differ by at most the codec bound (relative ~1e-5 here); the anchors are a
    # normalized EMA of the summed prototypes and the model a division of the summed deltas.
    for mode in ("secagg", "secagg+"):
        torch.testing.assert_close(out[mode][0], out["off"][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[mode][1], out["off"][1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out["off"][0], _trainer(None, secagg="off", dp="off", target_epsilon=None).server.anchors)  # type: ignore[attr-defined]


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_server_receives_masked_bytes_and_one_aggregate(dp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []
    calls: list[tuple[Any, ...]] = []
    plain: dict[int, np.ndarray] = {}
    encoded: dict[int, np.ndarray] = {}
    real_receive, real_apply = protocol.server.SecAggServer.receive, FedSAServer.apply
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
    monkeypatch.setattr(FedSAServer, "apply", rec_apply)
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
    kw: dict[str, Any] = dict(secagg=secagg, dp=dp, clients=4, cohort=4)
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


def test_fedsa_learns_above_chance_on_digits() -> None:
    t = _trainer(None, secagg="off", dp="off", target_epsilon=None, clients=6, cohort=6, rounds=5, seed=0)
    t.run()
    assert t.history[-1]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert isinstance(t.server, FedSAServer) and bool(t.server.updated.all())


def test_inversion_on_prototype_uploads_reads_means_and_counts() -> None:
    g = torch.Generator().manual_seed(9)
    f = torch.rand(20, DIM, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 3 + [1] * 17)
    spec = UploadSpec("off", 1.0, 100)
    blocks = prototype_blocks(f, y, C, spec, KeystreamRNG.from_seed(0, "t"), 1.0)
    layout = VectorLayout.build([("proto_sum", (C, DIM), 1e3), ("class_count", (C,), 1e3), ("delta", (3,), 1.0)])
    vec = layout.flatten({**blocks, "delta": np.zeros(3)})
    k = AttackerKnowledge(np.zeros((C, DIM)), np.zeros(C), "off", 0.5, 1.0, 0.0)
    inv = invert(layout, vec, k)
    np.testing.assert_allclose(inv.means[0], f[:3].mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(inv.counts, [3, 17, 0, 0])
    assert inv.present.tolist() == [True, True, False, False]


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_inversion_audit_runs_on_a_fedsa_run(dp: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(secagg="secagg+", dp=dp, clients=4, cohort=4, run_id=f"inv-{dp}", seed=1)
    kw.update(noise_multiplier=20.0, target_epsilon=None) if dp == "sample" else kw.update(target_epsilon=None)
    _trainer(tmp_path, **kw).run()
    res = audit_inversion(tmp_path / f"inv-{dp}", seed=0, points="first", progress=False)
    json.dumps(res, allow_nan=False)
    assert res["summary"]["applicable"] is True
    up = res["raw"]["points"][0]["views"]["upload"]["pooled"]
    if dp == "off":  # the summed prototype over the exact count is the class mean
        assert up["cosine_mean"] >= 0.999 and up["count_hit_rate"] == 1.0
        assert up["label_precision"] == 1.0 and up["label_recall"] == 1.0
        assert res["passed"] is True  # the sum gives no client's means beyond the population's
    else:
        assert res["raw"]["points"][0]["noise_std_sum"] > 0
        assert up["small_count_hit_rate"] < 0.5


def test_a_resumed_run_ends_where_an_unbroken_one_does(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(secagg="off", dp="off", target_epsilon=None, clients=4, cohort=4, rounds=2, run_id="res")
    first = _trainer(tmp_path, **kw)
    first.run(until=1)
    second = Trainer(first.cfg, progress=False, log=lambda s: None, run_dir=tmp_path / "res")
    second.resume_from(tmp_path / "res")
    second.run()
    full = _trainer(None, **kw)
    full.run()
    assert isinstance(second.server, FedSAServer) and isinstance(full.server, FedSAServer)
    torch.testing.assert_close(second.server.anchors, full.server.anchors)
    assert second.history[-1]["accuracy"] == full.history[-1]["accuracy"]
