"""Fixtures shared by the test modules, and the default selection.

* ``slow`` tests are deselected unless ``-m`` is given (``pytest -m slow`` runs only them,
  ``pytest -m "slow or not slow"`` everything); ``.ci/run`` runs them as their own step.
* ``finished_plain_run``: one finished tiny run (digits, 4 clients, 2 rounds, SecAgg+, no DP,
  reproducible), trained once per test session; each module gets its own copy of the run
  folder (``plain_run``), so a module that writes audit results into it changes no other
  module's view.
* ``finished_meta_run`` / ``meta_run``: the same run with ``--classifier meta``, for the
  modules whose audits read the weight-gradient block (the inversion audit's class-mean
  attack): FedHPro uploads that block only with the meta classifier. It is a second run
  because the meta classifier of so small a run (5 meta steps) does not learn, so the
  plain run stays the one that must learn above chance.
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
META_RUN = {**PLAIN_RUN, "classifier": "meta"}


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.markexpr:
        config.option.markexpr = "not slow"


def _finish(tmp_path_factory: pytest.TempPathFactory, settings: dict[str, Any], run_id: str) -> Path:
    from secure_fed.run.trainer import Trainer

    out = tmp_path_factory.mktemp("shared-runs")
    Trainer(TrainConfig(**settings, out=str(out), run_id=run_id), progress=False, log=lambda s: None).run()
    return out / run_id


def _copy(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("runs") / finished.name
    shutil.copytree(finished, dest)
    return dest


@pytest.fixture(scope="session")
def finished_plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared run folder (read it only; take ``plain_run`` to get a copy to write into)."""
    return _finish(tmp_path_factory, PLAIN_RUN, "plain")


@pytest.fixture(scope="module")
def plain_run(finished_plain_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the shared finished run."""
    return _copy(finished_plain_run, tmp_path_factory)


@pytest.fixture(scope="session")
def finished_meta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared ``--classifier meta`` run folder (read it only; ``meta_run`` is a copy)."""
    return _finish(tmp_path_factory, META_RUN, "meta")


@pytest.fixture(scope="module")
def meta_run(finished_meta_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the shared finished ``--classifier meta`` run."""
    return _copy(finished_meta_run, tmp_path_factory)


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
