"""The secure round's stated adversary in train and simulate (issue 13 in secure_fed/):
one (k, t) chooser, refusals, the delivered guarantee in config.json / audit / report,
client policy and nonce, and restarts after a reveal-stage dropout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.dropout import DropoutSchedule
from protocol.errors import ProtocolAbort
from protocol.params import round_params, tolerated_colluders
from protocol.policy import ClientPolicy
from secure_fed.aggregation.layout import PlaintextAggregator, VectorLayout
from secure_fed.aggregation.secagg import RingSettings, SecAggAggregator, SecAggSettings
from secure_fed.cli import simulate as simulate_cli
from secure_fed.cli.main import main
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.run.records import guarantee_line, round_line
from secure_fed.run.trainer import Trainer

LAYOUT = VectorLayout.build([("a", (5,), 10.0)])
SMALL = dict(clients=12, cohort=10, rounds=1, batch_size=64, rounds_of_hp=2, meta_steps=5,
             meta_per_class=5, hardened=False, seed=3, dp="off", target_epsilon=None)


def _trainer(tmp: Path | None = None, **kw: object) -> Trainer:
    cfg = TrainConfig(**{**SMALL, **kw, "out": str(tmp or "unused")})
    return Trainer(cfg, progress=False, log=lambda s: None, write_outputs=tmp is not None)


def _simulate_guarantee(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    import argparse

    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    assert simulate_cli.run(parser.parse_args([*argv, "--length", "4", "--quiet"])) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("guarantee:"))
    return line.removeprefix("guarantee: ").split("; unauthenticated")[0]


def test_the_default_digits_cohort_gets_the_complete_graph_with_c_1() -> None:
    t = _trainer()
    p = t.round_params
    assert p is not None and (p.graph, p.k, p.t, p.colluders) == ("complete", 9, 6, 1)
    assert p == round_params(10, 0.1, 1, halting_bits=6)
    assert t.threshold == 6 and tolerated_colluders(p.k, p.t) >= 1


@pytest.mark.parametrize("secagg,graph,c,dropout,auth", [
    ("secagg+", "harary", 1, 0.1, True),
    ("secagg+", "harary", 0, 0.05, True),
    ("secagg+", "harary", 2, 0.0, False),
    ("secagg", "complete", 3, 0.1, True),
])
def test_train_and_simulate_choose_the_same_k_and_t(capsys: pytest.CaptureFixture[str], secagg: str,
                                                    graph: str, c: int, dropout: float, auth: bool) -> None:
    t = _trainer(secagg=secagg, max_colluders=c, dropout=dropout, authenticated=auth, cohort=12)
    assert t.round_params is not None
    sim = _simulate_guarantee(capsys, "--clients", "12", "--graph", graph, "--max-colluders", str(c),
                              "--dropout", str(dropout), *([] if auth else ["--no-authenticated"]))
    assert sim == t.round_params.describe()


def test_a_threshold_below_the_colluder_bound_is_refused_in_train_and_simulate(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"--threshold 5 .* use --threshold >= 6"):
        _trainer(threshold=5)
    assert main(["simulate", "--clients", "10", "--threshold", "5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --threshold >= 6" in err[0] and "--max-colluders" in err[0]
    # the same t is accepted once the stated bound allows it
    assert _trainer(threshold=7).threshold == 7
    # an explicit k too small for c is refused too, naming what to change
    with pytest.raises(ConfigError, match="--max-colluders"):
        _trainer(cohort=10, neighbors=2, max_colluders=3)


def test_config_audit_and_report_state_the_delivered_guarantee(tmp_path: Path) -> None:
    from secure_fed.report.html import render_report

    t = _trainer(tmp_path, max_colluders=1)
    t.run()
    assert t.run_dir is not None
    p = t.round_params
    assert p is not None
    cfg = json.loads((t.run_dir / "config.json").read_text())
    assert cfg["secure_aggregation"] == json.loads(json.dumps(p.to_dict()))
    assert cfg["secure_aggregation"]["max_colluders"] == 1 and cfg["secure_aggregation"]["model"] == "active"
    TrainConfig.from_dict(cfg)  # the recorded guarantee does not break reading it back
    rounds = [json.loads(ln) for ln in (t.run_dir / "audit.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r.get("kind") == "round"]
    assert rounds and all(r["guarantee"]["guarantee"] for r in rounds)
    render_report(t.run_dir)
    html = (t.run_dir / "report.html").read_text()
    assert "Delivered guarantee" in html
    assert p.describe().replace("<", "&lt;") in html and "c = 1" in html


def test_no_authenticated_training_says_passive_and_uses_a_permissive_policy() -> None:
    t = _trainer(authenticated=False)
    line = guarantee_line(t.round_params)
    assert line is not None and "passive server only" in line
    assert t.round_params is not None and t.round_params.model == "passive"
    agg = t.aggregator
    assert isinstance(agg, SecAggAggregator)
    assert agg.secagg.client_policy() == ClientPolicy.permissive()
    rec = t.run_round(1)
    assert rec is not None and not rec.get("aborted") and rec["survivors"] >= 6


def test_authenticated_clients_require_a_nonce_and_the_colluder_bound() -> None:
    pol = SecAggSettings(max_colluders=2).client_policy()
    assert pol.require_authentication and pol.require_nonce and pol.min_colluders == 2
    ring = RingSettings(bits=32, hardened=False, seed=1)
    agg = SecAggAggregator(ring, SecAggSettings(graph="harary"))
    a, b = agg.protocol_config(1, list(range(10)), 5), agg.protocol_config(2, list(range(10)), 5)
    assert a.nonce and b.nonce and a.nonce != b.nonce  # a fresh nonce per round
    assert agg.protocol_config(1, list(range(10)), 5).nonce == a.nonce  # reproducible: seeded
    assert agg.protocol_config(1, list(range(10)), 5, attempt=1).nonce != a.nonce
    hard = SecAggAggregator(RingSettings(bits=32), SecAggSettings(graph="harary"))
    assert hard.protocol_config(1, list(range(10)), 5).nonce != hard.protocol_config(1, list(range(10)), 5).nonce


def _works(n: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(5)
    vecs = {c: rng.uniform(-3, 3, 5) for c in range(n)}
    return {c: (lambda v=v: v) for c, v in vecs.items()}, vecs


def test_a_reveal_stage_dropout_restarts_the_protocol_round_among_the_live_clients() -> None:
    work, vecs = _works(10)
    agg = SecAggAggregator(RingSettings(bits=32, hardened=False, seed=2),
                           SecAggSettings(graph="harary", dropout=0.1))  # complete, t = 6 at n = 10
    plan = {0: DropoutSchedule({"advertise": {1}, "reveal": {4, 7}}), 1: DropoutSchedule.at("masked", {2})}
    agg._drops = lambda round_id, cohort, attempt: plan[attempt]  # type: ignore[method-assign]
    out = agg.aggregate(3, LAYOUT, work)
    (restart,) = out.meta["restarts"]
    assert restart["missing_reveals"] == [4, 7] and restart["committed"] == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert restart["restart_cohort"] == [0, 2, 3, 5, 6, 8, 9]
    assert out.meta["protocol_cohort"] == [0, 2, 3, 5, 6, 8, 9]
    assert out.meta["summed"] == [0, 3, 5, 6, 8, 9]  # 2 dropped in the restarted round
    assert out.meta["dropped"] == [1, 2, 4, 7]
    g = out.meta["guarantee"]
    assert g["n"] == 7 and g["max_colluders"] == 1 and g["tolerated_colluders"] >= 1
    # never below the first attempt's t (the DP noise plan's): at n = 7 c = 1 alone needs t = 5
    assert g["t"] == out.meta["threshold"] == 6 and g["graph"] == "complete"
    ref = PlaintextAggregator().aggregate(3, LAYOUT, {c: work[c] for c in out.meta["summed"]})
    assert np.abs(out.vector - ref.vector).max() <= max(out.meta["error_bound"].values())
    line = round_line({"round": 3, "accuracy": 0.5, "loss": 1.0, "train_loss": None, "epsilon": None,
                       "survivors": 6, "cohort": 10, "bytes_up_per_client": None, "seconds": 1.0,
                       "restarts": 1}, 5, True)
    assert "restarted once after a reveal dropout" in line


def test_reveal_dropouts_in_every_attempt_abort_the_round_openly() -> None:
    work, _ = _works(10)
    agg = SecAggAggregator(RingSettings(bits=32, hardened=False, seed=2), SecAggSettings(graph="harary"))
    agg._drops = lambda round_id, cohort, attempt: DropoutSchedule.at("reveal", {cohort[0]})  # type: ignore[method-assign]
    with pytest.raises(ProtocolAbort, match="after 3 protocol rounds"):
        agg.aggregate(1, LAYOUT, work)


def test_a_training_round_with_a_reveal_dropout_is_recorded_as_restarted(tmp_path: Path) -> None:
    t = _trainer(tmp_path)
    agg = t.aggregator
    assert isinstance(agg, SecAggAggregator)
    agg._drops = lambda round_id, cohort, attempt: (  # type: ignore[method-assign]
        DropoutSchedule.at("reveal", {cohort[1]}) if attempt == 0 else DropoutSchedule.none())
    t.run()
    (rec,) = t.history
    assert rec.get("restarts") == 1 and rec["survivors"] == 9
    assert t.run_dir is not None
    audit = [json.loads(ln) for ln in (t.run_dir / "audit.jsonl").read_text().splitlines()]
    (rnd,) = [r for r in audit if r.get("kind") == "round"]
    assert len(rnd["restarts"]) == 1 and rnd["guarantee"]["n"] == 9
