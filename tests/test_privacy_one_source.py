"""One source per privacy formula: ``run_secure.py budget`` (form c, the run plan) and
``train`` must plan the same noise and charge the same events for the same run.

The ``--mechanism gaussian`` case holds today. The default run (discrete mechanism) and
``--dp client`` do not: ``budget`` plans float Gaussian releases of sample-level privacy
only, while ``train`` plans the discrete Gaussian in the ring at the codec's gamma and the
client unit; those two cases are strict xfails until ``budget`` plans through the same
object as ``train`` (they fail the suite the day they start to pass, so the marker goes).
"""

from __future__ import annotations

import json

import pytest

from dp.events import GaussianEvent
from secure_fed.config import TrainConfig
from secure_fed.run.trainer import Trainer
from tests.budget_helpers import run_budget

BASE = dict(clients=4, cohort=4, rounds=3, batch_size=64, rounds_of_hp=2, meta_steps=2, meta_per_class=2,
            partition="iid", hardened=False, out="unused",
            halting_bits=1.0)  # 4 clients at 10% dropout: the SecAgg round halts w.p. <= 0.27
NOT_YET = pytest.mark.xfail(strict=True, reason="budget plans float Gaussian sample-level events only")


def _budget_plan(cfg: TrainConfig, n: int) -> dict:
    argv = ["--rounds", str(cfg.rounds), "--clients", str(cfg.clients), "--cohort", str(cfg.cohort),
            "--local-epochs", str(cfg.local_epochs), "--batch-size", str(cfg.batch_size),
            "--delta", str(cfg.delta), "--accountant", cfg.accountant, "--json"]
    if cfg.dp == "sample":
        argv += ["--samples-per-client", str(n)]
    if cfg.algorithm == "fedhpro" or cfg.dp == "client":
        argv += ["--release-rate", str(1.0 if cfg.dp == "client" else cfg.release_rate)]
    if cfg.release_noise_ratio is not None:
        argv += ["--release-noise-ratio", str(cfg.release_noise_ratio)]
    argv += ["--target-epsilon", str(cfg.target_epsilon)]
    rc, out, err = run_budget(*argv)
    assert rc == 0, err
    return json.loads(out)


def _shape(e: object) -> tuple:
    assert isinstance(e, GaussianEvent), e
    return (e.label, e.sample_rate, e.steps, e.sampling, e.unit)


@pytest.mark.parametrize("over", [
    pytest.param({}, marks=NOT_YET, id="default"),
    pytest.param({"dp": "client"}, marks=NOT_YET, id="dp-client"),
    pytest.param({"mechanism": "gaussian"}, id="mechanism-gaussian"),
])
def test_budget_and_train_plan_the_same_noise_and_events(over: dict) -> None:
    cfg = TrainConfig(**{**BASE, **over})
    trainer = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    try:
        sigma = trainer.plan_noise()
        sizes = sorted({s.n for s in trainer.shards})
        plans = [_budget_plan(cfg, n) for n in sizes]
        # train plans every client (the largest noise any shape needs); budget one shape each
        assert max(p["noise_multiplier"] for p in plans) == pytest.approx(sigma, rel=1e-6)
        trainer.set_noise(sigma)
        charged = trainer._planned_events(1, [0])
        # the events budget's plan charges one client per round, at the same noise
        budget_events = plans[sizes.index(trainer.shards[0].n)]
        assert budget_events["plan"]["release_noise_ratio"] == trainer.privacy.s.release_noise_ratio  # type: ignore[union-attr]
        planned = _planned_budget_events(budget_events, sigma)
        assert [_shape(e) for e in charged] == [_shape(e) for e in planned]
        for a, b in zip(charged, planned, strict=True):
            assert isinstance(a, GaussianEvent) and isinstance(b, GaussianEvent)
            assert a.noise_multiplier == pytest.approx(b.noise_multiplier, rel=1e-9)
    finally:
        trainer.close()


def _planned_budget_events(res: dict, sigma: float) -> list:
    from dp.planning import RunPlan, round_events

    p = res["plan"]
    plan = RunPlan(rounds=p["rounds"], cohort_rate=p["cohort_rate"], release_rate=p["release_rate"],
                   local_steps=p["local_steps_per_round"], local_rate=p["local_rate"],
                   release_noise_ratio=p["release_noise_ratio"], participation=p["participation"])
    return round_events(plan, sigma, round_index=1)
