"""ProtoNorm: alignment/upscaling, the aggregator contract, the server view, DP, learning."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant as OpacusRDP

from dp.accountants import RDPAccountant
from secure_fed.aggregation.layout import Aggregate, PlaintextAggregator
from secure_fed.aggregation.secagg import RingSettings, SecAggAggregator, SecAggSettings
from secure_fed.cli.main import main
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.models import build_model
from secure_fed.fl.protonorm import ProtoNormServer, thomson_align, thomson_energy
from secure_fed.fl.server import FedServer
from secure_fed.privacy.upload import UploadSpec
from secure_fed.run.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SMALL = dict(algorithm="protonorm", clients=4, cohort=4, rounds=3, batch_size=32, dropout=0.0, hardened=False, seed=1)


def test_alignment_lowers_the_thomson_energy_and_stays_on_the_sphere() -> None:
    g = torch.Generator().manual_seed(0)
    close = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(6, 3, generator=g)  # crowded around one pole
    out = thomson_align(close, steps=200, lr=0.01)
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-6)
    assert thomson_energy(out) < 0.5 * thomson_energy(torch.nn.functional.normalize(close, dim=1))
    assert torch.allclose(thomson_align(close, steps=0, lr=0.01), torch.nn.functional.normalize(close, dim=1))


def test_flags_are_validated() -> None:
    for kw, flag in ((dict(pa_steps=-1), "--pa-steps"), (dict(pa_lr=0.0), "--pa-lr"), (dict(pu_norm=float("nan")), "--pu-norm"),
                      (dict(pn_min_snr=-0.5), "--pn-min-snr"), (dict(pn_min_snr=float("inf")), "--pn-min-snr")):
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(algorithm="protonorm", **kw)  # type: ignore[arg-type]


def _server(cfg: TrainConfig) -> ProtoNormServer:
    torch.manual_seed(0)
    model = build_model("digits", 10, (1, 8, 8))
    return ProtoNormServer(model, 10, torch.device("cpu"), UploadSpec("off", 1.0, 400), cfg)


def test_secagg_plus_and_plaintext_give_the_same_server_state_within_the_codec_bound() -> None:
    cfg = TrainConfig(algorithm="protonorm", dp="off")
    plain, secure = _server(cfg), _server(cfg)
    layout = plain.layout()
    rng = np.random.default_rng(3)
    vecs = {}
    for cid in range(6):
        v = np.zeros(layout.size)
        for b in layout.blocks:
            assert b.bound is not None
            v[b.offset:b.offset + b.size] = rng.uniform(0.1, 1, b.size) * min(b.bound, 3.0) / 4
        vecs[cid] = v
    work = {cid: (lambda v=v: v) for cid, v in vecs.items()}
    ring = RingSettings(bits=32, hardened=False, seed=7)
    a_ref = PlaintextAggregator().aggregate(1, layout, work)
    a_sec = SecAggAggregator(ring, SecAggSettings(graph="harary", neighbors=4, dropout_seed=1)).aggregate(1, layout, work)
    for b in layout.blocks:
        assert np.abs(a_sec.block(b.name) - a_ref.block(b.name)).max() <= a_sec.meta["error_bound"][b.name]
    plain.apply(a_ref, plain.broadcast(1))
    secure.apply(a_sec, secure.broadcast(1))
    assert plain.prototypes is not None and secure.prototypes is not None
    # the alignment is a smooth map of the directions: a codec error of ~1e-6 stays ~1e-6
    assert torch.allclose(plain.prototypes, secure.prototypes, atol=1e-3)
    assert torch.allclose(plain.prototypes.norm(dim=1), torch.full((10,), cfg.pu_norm), atol=1e-5)
    for k, v in plain.model.state_dict().items():
        assert torch.allclose(v, secure.model.state_dict()[k], atol=1e-3), k


def test_server_receives_only_aggregates_of_the_whole_cohort(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    orig = FedServer.apply

    def tap(self: FedServer, agg: Aggregate, broadcast: object) -> dict[str, float]:
        seen.append(agg)
        return orig(self, agg, broadcast)  # type: ignore[arg-type]

    monkeypatch.setattr(FedServer, "apply", tap)
    t = Trainer(TrainConfig(**{**SMALL, "rounds": 2}, secagg="secagg+", dp="off", target_epsilon=None, out="unused"),
                progress=False, log=lambda s: None, write_outputs=False)
    t.run()
    assert len(seen) == 2
    for agg in seen:
        assert type(agg) is Aggregate and agg.count == 4  # one sum over the cohort, nothing per client
    state = t.server.state_dict()
    assert set(state) - set(FedServer.state_dict(t.server)) == {"prototypes", "directions"}
    assert state["prototypes"].shape == (10, t.server.feature_dim)  # per class, not per client


def test_dp_sample_run_charges_its_release_as_opacus_does_and_the_inversion_audit_runs(tmp_path: Path) -> None:
    cfg = TrainConfig(**SMALL, secagg="secagg+", dp="sample", mechanism="gaussian", noise_multiplier=1.5,
                      noise_placement="local", target_epsilon=None, release_noise_ratio=2.0, out=str(tmp_path), run_id="pn")
    t = Trainer(cfg, progress=False, log=lambda s: None)
    t.run()
    rel = [e for e in t.ledger.events if e.label == "per_class_release"]
    sgd = [e for e in t.ledger.events if e.label == "dpsgd"]
    subjects = {e.subject for e in rel}
    assert len(subjects) == cfg.clients and sgd  # one release per client (its own data) per round
    assert {e.sample_rate for e in rel} == {cfg.release_rate}  # type: ignore[attr-defined]
    # closed form of the budget split (local placement: each client adds all of it): the
    # release's multiplier is the ratio times DP-SGD's
    assert {round(e.noise_multiplier, 9) for e in rel} == {3.0}  # type: ignore[attr-defined]
    assert {round(e.noise_multiplier, 9) for e in sgd} == {1.5}  # type: ignore[attr-defined]
    for subject in subjects:
        mine = [e for e in rel if e.subject == subject]
        assert len(mine) == cfg.rounds
        ref = OpacusRDP()
        ref.history = [(3.0, cfg.release_rate, cfg.rounds)]
        assert RDPAccountant().epsilon(mine, cfg.delta) == pytest.approx(ref.get_epsilon(delta=cfg.delta), rel=1e-3)
    assert main(["audit", str(tmp_path / "pn"), "--which", "inversion", "--inversion-points", "first", "--quiet"]) == 0
    audit = json.loads((tmp_path / "pn" / "audit_results.json").read_text())
    assert "applicable" in json.dumps(audit) and '"applicable": false' not in json.dumps(audit)
    # what the server read, in the round records and at the top of report.html
    from secure_fed.report.html import render_report

    read = [r["server_step"]["active"] for r in t.history]
    assert all(r["server_step"]["label"] == "protos" for r in t.history)
    page = render_report(tmp_path / "pn").read_text()
    assert f"protos: {sum(read)} of {10 * cfg.rounds} class-rounds read" in page
    assert ("The server read no class in" in page) is (sum(read) == 0)


@pytest.mark.parametrize(("secagg", "dp"), [("secagg", "client"), ("off", "sample")])
def test_runs_under_the_other_settings(secagg: str, dp: str) -> None:
    kw = dict(noise_placement="local") if secagg == "off" else {}
    t = Trainer(TrainConfig(**{**SMALL, "rounds": 1}, secagg=secagg, dp=dp, noise_multiplier=1.0, target_epsilon=None,
                            out="unused", **kw),  # type: ignore[arg-type]
                progress=False, log=lambda s: None, write_outputs=False)
    t.run()
    assert len(t.history) == 1 and np.isfinite(t.history[-1]["loss"])


def test_learns_above_chance_on_digits() -> None:
    t = Trainer(TrainConfig(**SMALL, secagg="secagg+", dp="off", target_epsilon=None, out="unused"),
                progress=False, log=lambda s: None, write_outputs=False)
    t.run()
    assert t.history[-1]["accuracy"] > 0.3  # chance is 0.1


def test_inversion_audit_reads_the_prototype_release(tmp_path: Path) -> None:
    """Without DP a client's own prototype upload gives its class means and counts exactly;
    the audit reads the declared release (proto_sum + class_count), not FedHPro's blocks."""
    from secure_fed.audit.inversion import audit_inversion

    cfg = TrainConfig(**{**SMALL, "rounds": 1}, secagg="secagg+", dp="off", target_epsilon=None, out=str(tmp_path), run_id="plain")
    Trainer(cfg, progress=False, log=lambda s: None).run()
    res = audit_inversion(tmp_path / "plain", points="first", progress=False)
    assert res["summary"]["applicable"] is True
    (point,) = res["raw"]["points"]
    upload = point["views"]["upload"]["pooled"]
    assert upload["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and upload["count_hit_rate"] == 1.0
    assert upload["label_precision"] == 1.0 and upload["label_recall"] == 1.0


def test_under_dp_a_class_below_the_count_gate_keeps_its_direction() -> None:
    """The server reads a class's direction only when its summed count clears 3 noise
    standard deviations: a noise-dominated sum must not become a broadcast prototype."""
    from secure_fed.fl.server import GATE_SDS

    tr = Trainer(TrainConfig(algorithm="protonorm", clients=4, cohort=4, rounds=1, dp="sample", noise_multiplier=1.0,
                             secagg="off", mechanism="gaussian", noise_placement="local", hardened=False, seed=0),
                 progress=False, log=lambda s: None, write_outputs=False)
    tr.set_noise(1.0)
    server = tr.server
    assert server.count_noise_std > 0  # installed by set_noise, as FedSA's and GFPL's
    layout = server.layout()
    gate = GATE_SDS * server.count_noise_std * 2.0  # sqrt(4 clients)
    vec = np.zeros(layout.size)
    sums = layout.view(vec, "proto_sum")
    counts = layout.view(vec, "class_count")
    strong = 10.0 * server.count_noise_std * 2.0 * server.feature_dim ** 0.5  # signal energy 100x the noise's
    sums[0, 0], counts[0] = strong, gate * 2  # clears the gate
    sums[1, 1], counts[1] = strong, gate * 0.5  # positive but below it: noise
    agg = Aggregate(vec, 4, layout, 1)
    stats = server._apply_extras(agg, server.broadcast(1))
    assert stats["active_classes"] == 1.0
    assert server.directions is not None and server.prototypes is not None
    assert torch.allclose(server.directions[0].norm(), torch.tensor(1.0))
    assert float(server.directions[1].norm()) == 0.0 and float(server.prototypes[1].norm()) == 0.0


def test_classes_without_a_prototype_add_no_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples of a class the server never read add nothing to the prototype loss: a zero
    prototype is no target (pulling those features to the origin would be a bug)."""
    import secure_fed.fl.protonorm as pn
    from crypto.rng import KeystreamRNG
    from secure_fed.fl.client import ClientContext

    tr = Trainer(TrainConfig(algorithm="protonorm", clients=2, cohort=2, rounds=1, dp="off", secagg="off",
                             hardened=False, seed=0, proto_weight=1.0),
                 progress=False, log=lambda s: None, write_outputs=False)
    captured = {}
    real = pn.train_locally

    def spy(model, shard, ctx, extra):  # type: ignore[no-untyped-def]
        captured["extra"] = extra
        return real(model, shard, ctx, extra)

    monkeypatch.setattr(pn, "train_locally", spy)
    dim = tr.server.feature_dim
    protos = torch.zeros(tr.num_classes, dim)
    protos[0] = 3.0
    bc = dataclasses.replace(tr.server.broadcast(1), extras={"prototypes": protos})
    ctx = ClientContext(tr.cfg, tr.spec, tr.num_classes, torch.Generator().manual_seed(0), KeystreamRNG.from_seed(0, "t"))
    pn.protonorm_client_round(bc, tr.shards[0], copy.deepcopy(tr.server.model), ctx)
    extra = captured["extra"]
    f = torch.ones(3, dim)
    assert float(extra(f, torch.tensor([1, 2, 3]))) == 0.0  # no prototype for these classes: no pull
    # one sample of class 0 (prototype 3 everywhere), two without: the sum over one sample's
    # squared errors over the batch's entries, as MSE's mean over every entry
    assert float(extra(f, torch.tensor([0, 1, 1]))) == pytest.approx((1 - 3.0) ** 2 * dim / f.numel())


def test_under_dp_a_count_above_the_gate_does_not_make_a_noise_direction_a_prototype() -> None:
    """A class whose count clears the gate but whose summed features are at the noise level
    (the mnist5k epsilon-8 regime) is not read; one whose estimated signal energy is
    ``--pn-min-snr`` times the noise energy is. A noise direction read as a prototype puts
    negative targets on ReLU features: that took ProtoNorm to chance accuracy."""
    from secure_fed.fl.server import GATE_SDS

    tr = Trainer(TrainConfig(algorithm="protonorm", clients=4, cohort=4, rounds=1, dp="sample", noise_multiplier=1.0,
                             secagg="off", mechanism="gaussian", noise_placement="local", hardened=False, seed=0),
                 progress=False, log=lambda s: None, write_outputs=False)
    tr.set_noise(1.0)
    server = tr.server
    layout = server.layout()
    sigma = server.count_noise_std * 2.0  # std of one summed entry: sqrt(4 clients)
    d = server.feature_dim
    rng = np.random.default_rng(0)
    vec = np.zeros(layout.size)
    sums, counts = layout.view(vec, "proto_sum"), layout.view(vec, "class_count")
    counts[:] = GATE_SDS * sigma * 10  # every count far above the count gate
    sums[0] = rng.normal(0, sigma, d)  # pure noise: estimated signal energy about 0
    sums[1] = rng.normal(0, sigma, d)
    sums[1, 0] += 3.0 * sigma * d ** 0.5  # signal energy 9 d sigma^2: clears min_snr 1
    sums[2] = rng.normal(0, sigma, d)
    sums[2, 0] += 0.5 * sigma * d ** 0.5  # signal energy d sigma^2 / 4: below it
    sums[3:] = 0.0
    agg = Aggregate(vec, 4, layout, 1)
    stats = server._apply_extras(agg, server.broadcast(1))
    assert stats["active_classes"] == 1.0
    assert server.directions is not None
    norms = server.directions.norm(dim=1)
    assert float(norms[1]) == pytest.approx(1.0) and float(norms[0]) == 0.0 and float(norms[2]) == 0.0
    # the threshold is the flag's: at --pn-min-snr 0 the weak class is read too, at 20 none is
    for snr, expected in ((0.0, 2.0), (20.0, 0.0)):
        server.cfg = dataclasses.replace(server.cfg, pn_min_snr=snr)
        server.directions = None
        assert server._apply_extras(agg, server.broadcast(1))["active_classes"] == expected
    # without DP the test is off: any positive count with a non-zero sum is read
    plain = Trainer(TrainConfig(algorithm="protonorm", clients=4, cohort=4, rounds=1, dp="off", secagg="off",
                                hardened=False, seed=0), progress=False, log=lambda s: None, write_outputs=False).server
    pvec = np.zeros(plain.layout().size)
    plain.layout().view(pvec, "proto_sum")[:] = sums
    plain.layout().view(pvec, "class_count")[:] = counts
    assert plain._apply_extras(Aggregate(pvec, 4, plain.layout(), 1), plain.broadcast(1))["active_classes"] == 3.0
