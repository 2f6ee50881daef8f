"""One source per privacy formula: ``run_secure.py budget --from-run`` and ``train`` must
plan the same noise and charge the same events for the same run.

``train`` plans, enforces ``--target-epsilon`` and charges through
:class:`secure_fed.privacy.noise.RunPrivacy`; ``budget --from-run RUN_DIR`` rebuilds that
object from the run folder alone (config.json, layout.json, partition.json). The runs here
stop after planning (``run(until=0)``): the plan is all these tests read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dp.events import event_to_dict
from secure_fed.config import TrainConfig
from secure_fed.run.trainer import Trainer
from tests.budget_helpers import run_budget

BASE = dict(clients=4, cohort=4, rounds=3, batch_size=64, rounds_of_hp=2, meta_steps=2, meta_per_class=2,
            partition="dirichlet", hardened=False,
            halting_bits=1.0)  # 4 clients at 10% dropout: the SecAgg round halts w.p. <= 0.27


def _planned_run(tmp_path: Path, over: dict) -> tuple[Trainer, Path]:
    cfg = TrainConfig(**{**BASE, **over}, out=str(tmp_path), run_id="r")
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    trainer.run(until=0)  # plans the noise and writes the static outputs, trains no round
    return trainer, tmp_path / "r"


def _same_event(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("over", [
    pytest.param({}, id="default"),
    pytest.param({"dp": "client"}, id="dp-client"),
    pytest.param({"mechanism": "gaussian"}, id="mechanism-gaussian"),
    pytest.param({"classifier": "meta"}, id="classifier-meta"),
])
def test_budget_and_train_plan_the_same_noise_and_events(tmp_path: Path, over: dict) -> None:
    trainer, run_dir = _planned_run(tmp_path, over)
    try:
        rc, out, err = run_budget("--from-run", str(run_dir), "--json")
        assert rc == 0, err
        res = json.loads(out)
        assert trainer.noise_plan is not None
        assert res["noise_multiplier"] == pytest.approx(trainer.noise_multiplier, rel=1e-9, abs=0)
        assert res["planned_epsilon"] == pytest.approx(trainer.noise_plan.epsilon, rel=0, abs=1e-6)
        assert res["worst_client_samples"] == trainer.shards[res["worst_client"]].n
        # the events train would enforce and charge for that client, at the same noise
        charged = [event_to_dict(e) for e in trainer._planned_events(1, [res["worst_client"]])]
        assert [e["label"] for e in charged] == [e["label"] for e in res["round_events"]]
        for a, b in zip(charged, res["round_events"], strict=True):
            _same_event(a, b)
        cfg = trainer.cfg
        if cfg.mechanism == "discrete":
            assert {e["kind"] for e in charged if e["label"] != "dpsgd"} == {"discrete_gaussian"}
            assert res["codec_gamma"] == pytest.approx(trainer.privacy.release_gamma(), rel=1e-12)  # type: ignore[union-attr]
        labels = {e["label"] for e in charged}
        if cfg.classifier == "meta":
            assert "weight_release" in labels
        if cfg.dp == "client":
            assert labels == {"client_update"} and {e["unit"] for e in charged} == {"client"}
    finally:
        trainer.close()


def test_budget_from_run_prints_the_worst_clients_sample_count(tmp_path: Path) -> None:
    trainer, run_dir = _planned_run(tmp_path, {})
    trainer.close()
    rc, out, err = run_budget("--from-run", str(run_dir))
    assert rc == 0, err
    plan = trainer.noise_plan
    assert plan is not None
    assert f"{plan.worst_client_samples} samples" in out
    recorded = json.loads((run_dir / "config.json").read_text())["noise_plan"]
    assert recorded["noise_multiplier"] == trainer.noise_multiplier


def test_budget_from_run_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    rc, out, err = run_budget("--from-run", str(tmp_path))
    assert rc == 2 and out == ""
    assert "config.json" in err and len(err.strip().splitlines()) == 1


def test_budget_with_trains_flags_plans_as_train_does(tmp_path: Path) -> None:
    trainer, _ = _planned_run(tmp_path, {})
    trainer.close()
    flags = ["--clients", "4", "--cohort", "4", "--rounds", "3", "--batch-size", "64", "--rounds-of-hp", "2",
             "--meta-steps", "2", "--meta-per-class", "2", "--partition", "dirichlet", "--no-hardened",
             "--halting-bits", "1"]  # as BASE: 4 clients at 10% dropout
    rc, out, err = run_budget("--json", "--train", *flags)
    assert rc == 0, err
    res = json.loads(out)
    assert trainer.noise_plan is not None
    assert res["noise_multiplier"] == pytest.approx(trainer.noise_multiplier, rel=1e-9, abs=0)
    assert res["planned_epsilon"] == pytest.approx(trainer.noise_plan.epsilon, rel=0, abs=1e-6)
    assert res["worst_client_samples"] == trainer.noise_plan.worst_client_samples


def test_budget_train_refuses_a_flag_train_does_not_know() -> None:
    rc, out, err = run_budget("--train", "--no-such-flag", "1")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
