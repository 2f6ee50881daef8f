"""Fixtures shared by the test modules, and the default selection.

* ``slow`` tests are deselected unless ``-m`` is given (``pytest -m slow`` runs only them,
  ``pytest -m "slow or not slow"`` everything); ``.ci/run`` runs them as their own step.
* ``finished_plain_run``: one finished tiny run (digits, 4 clients, 2 rounds, SecAgg+, no DP,
  reproducible), trained once per test session; each module gets its own copy of the run
  folder (``plain_run``), so a module that writes audit results into it changes no other
  module's view.
* ``ray_session``: one local Ray instance (2 CPUs) for every test that needs Ray; executors
  join it and leave it running; it stops when the session ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_fed.config import TrainConfig

PLAIN_RUN = dict(clients=4, cohort=4, rounds=2, batch_size=32, rounds_of_hp=3, meta_steps=5, meta_per_class=5,
                 secagg="secagg+", dropout=0.0, dp="off", target_epsilon=None, hardened=False, seed=1)


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.markexpr:
        config.option.markexpr = "not slow"


@pytest.fixture(scope="session")
def finished_plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared run folder (read it only; take ``plain_run`` to get a copy to write into)."""
    from secure_fed.run.trainer import Trainer

    out = tmp_path_factory.mktemp("shared-runs")
    Trainer(TrainConfig(**PLAIN_RUN, out=str(out), run_id="plain"), progress=False, log=lambda s: None).run()
    return out / "plain"


@pytest.fixture(scope="module")
def plain_run(finished_plain_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the shared finished run."""
    dest = tmp_path_factory.mktemp("runs") / "plain"
    shutil.copytree(finished_plain_run, dest)
    return dest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """The ray module, initialized once for the session (skips without the ray extra)."""
    from secure_fed.executor.raysupport import ray_available

    if not ray_available():
        pytest.skip("needs the ray extra (pip install -e '.[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
