"""End-to-end plaintext training: determinism, resume, outputs, every algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_fed.config import TrainConfig
from secure_fed.run.rundir import verify_chain
from secure_fed.run.trainer import Trainer

SMALL = dict(clients=4, cohort=3, rounds=2, batch_size=64, rounds_of_hp=5, meta_steps=10, meta_per_class=5,
             secagg="off", dp="off", target_epsilon=None)


def _run(tmp: Path | None, **kw: object) -> list[dict]:
    cfg = TrainConfig(**{**SMALL, **kw, "out": str(tmp or "unused")})
    t = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=tmp is not None)
    t.run()
    return t.history


@pytest.mark.parametrize("algorithm", ["fedhpro", "fedavg", "fedproto"])
def test_same_seed_same_metrics(algorithm: str) -> None:
    a = _run(None, algorithm=algorithm, seed=3)
    b = _run(None, algorithm=algorithm, seed=3)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]
    assert 0.0 <= a[-1]["accuracy"] <= 1.0
    assert "personalized_accuracy" in a[-1]


def test_meta_classifier_replaces_head() -> None:
    a = _run(None, classifier="meta", seed=1)
    b = _run(None, classifier="fedavg", seed=1)
    assert a[-1]["accuracy"] != b[-1]["accuracy"] or a[-1]["loss"] != b[-1]["loss"]


def test_outputs_and_audit_chain(tmp_path: Path) -> None:
    _run(tmp_path, run_id="r1")
    run = tmp_path / "r1"
    for name in ("config.json", "metrics.json", "audit.jsonl", "model.pt", "partition.json", "checkpoint.pt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert verify_chain(run / "audit.jsonl") == 3  # the config record, then one per round
    hist = json.loads((run / "partition.json").read_text())["class_histogram"]
    assert len(hist) == 4 and sum(map(sum, hist)) > 0
    cfg = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_dict(cfg).rounds == 2


def test_resume_continues_identically(tmp_path: Path) -> None:
    full = _run(None, rounds=3, seed=5)
    cfg = TrainConfig(**{**SMALL, "rounds": 3, "seed": 5, "out": str(tmp_path), "run_id": "r"})
    first = Trainer(cfg, progress=False, log=lambda s: None)
    first.run(until=2)
    second = Trainer(cfg, progress=False, log=lambda s: None, run_dir=tmp_path / "r")
    second.resume_from(tmp_path / "r")
    second.run()
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(second.history) == strip(full)
    assert verify_chain(tmp_path / "r" / "audit.jsonl") == 5  # config, rounds 1-2, the resume, round 3


@pytest.mark.cuda
def test_one_round_on_cuda_matches_cpu() -> None:
    """One plaintext FedHPro round on CUDA vs CPU. Tolerance: accuracy within 2 test samples
    (float32 kernels differ between devices), hyper-prototypes within 1e-3."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = {}
    for dev in ("cpu", "cuda"):
        cfg = TrainConfig(**{**SMALL, "rounds": 1, "device": dev, "seed": 4, "out": "unused"})
        t = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
        t.run()
        out[dev] = (t.history[-1]["accuracy"], t.server.hyper_prototypes.cpu())  # type: ignore[attr-defined]
    assert abs(out["cpu"][0] - out["cuda"][0]) <= 2 / 360
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("secagg,placement", [("off", "local"), ("secagg+", "distributed")])
def test_discrete_plan_holds_for_every_planned_round(secagg: str, placement: str, tmp_path: Path) -> None:
    # The planned noise sets the codec's gamma, which sets the charged sensitivity: the plan
    # must use the gamma the run will charge, or a planned round is refused by the budget.
    cfg = TrainConfig(clients=6, cohort=6, rounds=3, batch_size=2000, lr=0.5, rounds_of_hp=2, meta_steps=2,
                      meta_per_class=2, dropout=0.0, hardened=False, secagg=secagg, noise_placement=placement,
                      mechanism="discrete", target_epsilon=4.0, alpha=0.1, out=str(tmp_path))
    t = Trainer(cfg, progress=False)
    t.run()
    assert t.stopped is None and [r["round"] for r in t.history] == [1, 2, 3]
    assert t.history[-1]["epsilon"] <= 4.0


def test_a_tiny_run_learns_above_chance(finished_plain_run: Path) -> None:
    # the session's finished 2-round FedHPro run on digits (10 balanced classes: chance is 0.1)
    rounds = json.loads((finished_plain_run / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["accuracy"] > 0.3, rounds[-1]
