"""A run with a budget split (--release-noise-ratio) is audited at the release's own noise."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fed.audit.one_run import audit_one_run, run_release_specs
from secure_fed.config import TrainConfig
from secure_fed.run.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("mechanism", ["discrete", "gaussian"])
def test_one_run_audit_uses_the_release_noise_multiplier(tmp_path: Path, mechanism: str) -> None:
    cfg = TrainConfig(clients=4, cohort=3, rounds=2, batch_size=64, rounds_of_hp=2, meta_steps=2, meta_per_class=2,
                      secagg="secagg", dropout=0.0, noise_multiplier=0.8, release_noise_ratio=2.5,
                      mechanism=mechanism, target_epsilon=None, hardened=False, out=str(tmp_path), run_id="split")
    Trainer(cfg, progress=False, log=lambda s: None).run()
    specs, journaled, _ = run_release_specs(tmp_path / "split")
    assert [s.noise_multiplier for s in specs] == [pytest.approx(2.0)] * 2  # 2.5 x DP-SGD's 0.8
    # the per-class release is C x C + C = 110 entries per round: 2 rounds hold 220 canaries
    out = audit_one_run(tmp_path / "split", seed=3, canaries=200)
    # The audit rebuilds the release from the config; with DP-SGD's multiplier it would not
    # match the events the run journaled.
    assert out["summary"]["journal_matches_mechanism"] is True
    assert out["passed"] is True
