"""The secure round: aggregator contract, server view, budget stop, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fed.aggregation.layout import PlaintextAggregator, VectorLayout
from secure_fed.aggregation.secagg import (
    RingAggregator,
    RingSettings,
    SecAggAggregator,
    SecAggSettings,
)
from secure_fed.config import DEFAULT_RELEASE_NOISE_RATIO, TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.run.rundir import read_audit, verify_chain
from secure_fed.run.trainer import Trainer

LAYOUT = VectorLayout.build([("a", (3, 4), 50.0), ("b", (7,), 2.0), ("n", (1,), 100.0)])


def _works(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vecs = {}
    for cid in range(n):
        v = np.concatenate([rng.uniform(-5, 5, 12), rng.uniform(-2, 2, 7), [float(cid + 1)]])
        vecs[cid] = v
    return {cid: (lambda v=v: v) for cid, v in vecs.items()}, vecs


def _aggregators() -> dict:
    ring = RingSettings(bits=32, hardened=False, seed=7)
    return {
        "plaintext": PlaintextAggregator(),
        "ring": RingAggregator(ring),
        "secagg": SecAggAggregator(ring, SecAggSettings(graph="complete", dropout_seed=1)),
        "secagg+": SecAggAggregator(ring, SecAggSettings(graph="harary", neighbors=4, dropout_seed=1)),
    }


@pytest.mark.parametrize("name", ["ring", "secagg", "secagg+"])
def test_contract_every_aggregator_returns_the_sum_within_the_codec_bound(name: str) -> None:
    work, vecs = _works(8)
    ref = PlaintextAggregator().aggregate(3, LAYOUT, work)
    agg = _aggregators()[name].aggregate(3, LAYOUT, work)
    assert agg.count == 8 and agg.round_id == 3
    bound = agg.meta["error_bound"]
    for block in LAYOUT.blocks:
        err = np.abs(agg.block(block.name) - ref.block(block.name)).max()
        assert err <= bound[block.name], (name, block.name, err, bound[block.name])
    np.testing.assert_allclose(ref.vector, sum(vecs.values()))


def test_secagg_equals_trusted_ring_sum_exactly() -> None:
    work, _ = _works(6, seed=3)
    aggs = _aggregators()
    ring = aggs["ring"].aggregate(0, LAYOUT, work)
    for name in ("secagg", "secagg+"):
        sec = aggs[name].aggregate(0, LAYOUT, work)
        np.testing.assert_array_equal(sec.vector, ring.vector)  # same seeded rounding, exact ring sum


def test_dropouts_sum_only_survivors() -> None:
    work, vecs = _works(10, seed=4)
    ring = RingSettings(bits=32, hardened=False, seed=1)
    agg = SecAggAggregator(ring, SecAggSettings(graph="harary", neighbors=6, dropout=0.3, dropout_seed=9)).aggregate(2, LAYOUT, work)
    summed = agg.meta["summed"]
    assert agg.count == len(summed) and set(agg.meta["dropped"]) == set(range(10)) - set(summed)
    expect = sum(vecs[c] for c in summed)
    assert np.abs(agg.vector - expect).max() <= max(agg.meta["error_bound"].values())
    assert agg.meta["bytes"]["masked"]["up"] > 0


BASE = dict(clients=6, cohort=6, rounds=2, batch_size=64, rounds_of_hp=5, meta_steps=10, meta_per_class=5,
            hardened=False, seed=2, dropout=0.0)


def _trainer(tmp: Path | None, **kw: object) -> Trainer:
    cfg = TrainConfig(**{**BASE, **kw, "out": str(tmp or "unused")})
    return Trainer(cfg, progress=False, log=lambda s: None, write_outputs=tmp is not None)


def test_same_round_plaintext_vs_secagg_gives_matching_hyper_prototypes() -> None:
    out = {}
    for mode in ("off", "secagg", "secagg+"):
        t = _trainer(None, secagg=mode, dp="off", target_epsilon=None, rounds=1)
        t.run()
        out[mode] = t.server.hyper_prototypes.clone()  # type: ignore[attr-defined]
    # Aggregates differ by at most the codec bound (relative ~1e-5 here); 5 SGD steps of cosine
    # matching move P by lr * steps * O(relative error) -> well inside 1e-3.
    for mode in ("secagg", "secagg+"):
        torch.testing.assert_close(out[mode], out["off"], rtol=1e-3, atol=1e-3)


def test_target_epsilon_stops_before_crossing(tmp_path: Path) -> None:
    t = _trainer(tmp_path, secagg="secagg+", dp="sample", noise_multiplier=3.0, target_epsilon=3.0, rounds=20, run_id="eps")
    t.run()
    eps = [r["epsilon"] for r in t.history]
    assert t.stopped is not None and 2 <= len(eps) < 20
    assert max(eps) <= 3.0
    recs = list(read_audit(tmp_path / "eps" / "audit.jsonl"))
    assert recs[-1]["kind"] == "stop" and "would be exceeded" in recs[-1]["reason"]
    assert verify_chain(tmp_path / "eps" / "audit.jsonl") == len(recs)
    assert recs[0]["kind"] == "config"
    for rec in recs[1:-1]:
        assert rec["epsilon"]["rdp"]["max"] <= 3.0
        assert all(e["round"] == rec["round"] for e in rec["events"])


def test_dp_round_audit_has_no_exact_counts(tmp_path: Path) -> None:
    t = _trainer(tmp_path, secagg="secagg+", dp="sample", target_epsilon=None, noise_multiplier=1.0, rounds=1, run_id="dp")
    assert "n" not in t.layout.names() and "holders" not in t.layout.names()
    t.run()
    rec = next(r for r in read_audit(tmp_path / "dp" / "audit.jsonl") if r["kind"] == "round")
    labels = {e["label"] for e in rec["events"]}
    assert labels == {"per_class_release", "dpsgd"}
    assert {e["subject"] for e in rec["events"]} == {str(c) for c in rec["summed"]}
    cfg = json.loads((tmp_path / "dp" / "config.json").read_text())
    assert cfg["environment"]["torch"] == torch.__version__


def test_hardened_resume_counts_a_release_interrupted_before_its_checkpoint(tmp_path: Path) -> None:
    kw = dict(secagg="secagg+", dp="sample", noise_multiplier=2.0, target_epsilon=None, rounds=3, hardened=True,
              run_id="h")
    first = _trainer(tmp_path, **kw)
    first.run(until=2)
    # Round 3 releases its sum, then the process dies before the checkpoint.
    first._checkpoint = lambda r: None  # type: ignore[method-assign]
    first.run_round(3)
    cfg = first.cfg
    second = Trainer(cfg, progress=False, log=lambda s: None, run_dir=tmp_path / "h")
    second.resume_from(tmp_path / "h")
    assert second.interrupted_releases == [3]
    rounds_before = [e.round for e in second.ledger.events]
    assert rounds_before.count(3) > 0  # the lost release is on the ledger
    second.run()
    r3 = [e for e in second.ledger.events if e.round == 3]
    assert len(r3) == 2 * len([e for e in second.ledger.events if e.round == 2])  # counted twice: two releases
    # appended, never rewritten: config, rounds 1-3, the resume, round 3 again (marked rerun)
    assert verify_chain(tmp_path / "h" / "audit.jsonl") == 6
    recs = list(read_audit(tmp_path / "h" / "audit.jsonl"))
    assert [r.get("kind") for r in recs] == ["config", "round", "round", "round", "resume", "round"]
    assert recs[4]["rerun_rounds"] == [3] and recs[4]["recovered_releases"] == [3] and recs[5]["rerun"] is True


def test_reproducible_resume_counts_the_identical_redo_once(tmp_path: Path) -> None:
    kw = dict(secagg="secagg+", dp="sample", noise_multiplier=2.0, target_epsilon=None, rounds=3, run_id="r")
    first = _trainer(tmp_path, **kw)
    first.run(until=2)
    first._checkpoint = lambda r: None  # type: ignore[method-assign]
    first.run_round(3)
    second = Trainer(first.cfg, progress=False, log=lambda s: None, run_dir=tmp_path / "r")
    second.resume_from(tmp_path / "r")
    assert second.interrupted_releases == []
    second.run()
    full = _trainer(None, **kw)
    full.run()
    assert second.ledger.to_json() == full.ledger.to_json()


@pytest.mark.parametrize("mechanism", ["discrete", "gaussian"])
def test_fedavg_under_dp_has_no_release_and_runs_with_either_mechanism(mechanism: str) -> None:
    t = _trainer(None, algorithm="fedavg", secagg="secagg+", dp="sample", mechanism=mechanism,
                 noise_multiplier=2.0, target_epsilon=None, rounds=1)
    t.run()
    labels = {e.label for e in t.ledger.events}
    assert labels == {"dpsgd"}


def test_budget_split_moves_noise_from_dpsgd_to_the_release(tmp_path: Path) -> None:
    """--release-noise-ratio R: the release carries R times DP-SGD's noise multiplier, in
    the noise the clients add and in the ledger; planning gives DP-SGD less noise for the
    same target, and the run still ends within it."""
    kw = dict(secagg="secagg+", dp="sample", noise_placement="local", mechanism="gaussian", rounds=1)
    plain = _trainer(None, **kw, target_epsilon=8.0, release_noise_ratio=1.0)
    split = _trainer(None, **kw, target_epsilon=8.0, release_noise_ratio=3.0)
    z1, z3 = plain.plan_noise(), split.plan_noise()
    assert z3 < z1  # DP-SGD gets less noise when the release takes more
    default = _trainer(None, **kw, target_epsilon=8.0)
    assert default.cfg.release_noise_ratio is None and default.cfg.release_ratio() == DEFAULT_RELEASE_NOISE_RATIO
    assert default.privacy is not None and default.privacy.s.release_noise_ratio == DEFAULT_RELEASE_NOISE_RATIO
    assert _trainer(None, **{**kw, "algorithm": "fedavg"}, target_epsilon=8.0).cfg.release_ratio() == 1.0

    fixed = _trainer(tmp_path, **kw, target_epsilon=None, noise_multiplier=1.5, release_noise_ratio=3.0,
                     run_id="split")
    fixed.run()
    assert fixed.privacy is not None
    # the release's noise is 4.5 times its own sensitivity (its natural bound, not --clip)
    assert fixed.privacy.noise.share_std() == pytest.approx(4.5 * fixed.spec.release_sensitivity)
    rec = next(r for r in read_audit(tmp_path / "split" / "audit.jsonl") if r["kind"] == "round")
    assert rec["dp"]["release_noise_multiplier"] == pytest.approx(4.5)
    by_label: dict[str, set[float]] = {}
    for e in rec["events"]:
        by_label.setdefault(e["label"], set()).add(round(e["noise_multiplier"], 9))
    assert by_label["dpsgd"] == {1.5}
    # every summed client adds all of 4.5 * C (local placement), but float noise goes in before the
    # codec clamps and rounds each upload, so the ledger credits one client's noise, not the sum's
    assert len(rec["summed"]) > 1
    assert by_label["per_class_release"] == {4.5}

    planned = _trainer(tmp_path, **{**kw, "rounds": 3}, target_epsilon=4.0, release_noise_ratio=3.0, run_id="planned")
    planned.run()
    assert planned.stopped is None and len(planned.history) == 3
    assert max(r["epsilon"] for r in planned.history) <= 4.0


@pytest.mark.parametrize("kw", [dict(algorithm="fedavg"), dict(dp="client"), dict(release_noise_ratio=0.0),
                                dict(release_noise_ratio=float("inf"))])
def test_budget_split_is_refused_where_it_means_nothing(kw: dict) -> None:
    with pytest.raises(ConfigError, match="--release-noise-ratio"):
        TrainConfig(**{**BASE, "dp": "sample", "target_epsilon": 8.0, "release_noise_ratio": 2.0, **kw})


def test_server_workers_reach_the_server_and_give_the_same_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """--server-workers: the secure aggregator's server unmasks dropped clients' masks in
    worker processes (forced here for a small round) and the sum is the same."""
    import protocol.server as server_mod

    monkeypatch.setattr(server_mod, "MIN_PARALLEL_PAIRS", 0)
    seen: list[int] = []
    real = server_mod.SecAggServer.__init__

    def record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("workers", 1))
        real(self, *args, **kwargs)

    monkeypatch.setattr(server_mod.SecAggServer, "__init__", record)
    work, _ = _works(12, seed=3)
    ring = RingSettings(bits=32, hardened=False, seed=7)
    sums = {}
    for w in (1, 2):
        agg = SecAggAggregator(ring, SecAggSettings(graph="harary", neighbors=6, dropout=0.15, dropout_seed=6,
                                                    server_workers=w))
        sums[w] = agg.aggregate(3, LAYOUT, work)
    assert seen == [1, 2]
    assert sums[2].meta["dropped"] and sums[2].digest() == sums[1].digest()
    assert np.array_equal(sums[2].vector, sums[1].vector)
    assert TrainConfig(**{**BASE, "server_workers": 2, "dp": "off", "target_epsilon": None}).server_workers == 2
