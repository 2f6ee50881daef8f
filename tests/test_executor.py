"""Executors: the same seed gives the same protocol sums and training under local and Ray.

One local Ray instance (2 CPUs) serves the whole module; Ray tests are skipped only where
Ray is not installed.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

from protocol.config import ProtocolConfig
from protocol.dropout import DropoutSchedule
from protocol.errors import ProtocolError
from protocol.params import choose_graph_params
from protocol.runner import run_secure_round
from protocol.simulator import simulate, simulated_input
from secure_fed.cli import main as cli
from secure_fed.cli import simulate as simulate_cli
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.executor import LocalExecutor, make_executor
from secure_fed.executor.raysupport import ray_available
from secure_fed.run.trainer import Trainer

needs_ray = pytest.mark.skipif(not ray_available(), reason="needs the ray extra")


@pytest.fixture(scope="module")
def ray_cluster(ray_session: Any) -> None:
    """The session's local Ray instance (tests/conftest.py); executors join it and leave it running."""


def test_local_is_the_default_and_bad_values_are_refused() -> None:
    assert isinstance(make_executor(), LocalExecutor)
    assert TrainConfig().executor == "local"
    with pytest.raises(ConfigError, match="--executor"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--workers"):
        TrainConfig(workers=-1)


def test_inputs_are_produced_lazily_once_and_only_for_clients_that_mask() -> None:
    ids = tuple(range(8))
    cfg = ProtocolConfig(0, ids, 16, 32, 4, "harary", 6, authenticated=False)
    made: list[int] = []

    def produce(u: int) -> np.ndarray:
        made.append(u)
        return simulated_input(u, 16, 32, 1)

    drops = DropoutSchedule({"share": frozenset({2}), "masked": frozenset({5})})
    res = run_secure_round(produce, cfg, drops)
    assert sorted(made) == sorted(res.summed) == [0, 1, 3, 4, 6, 7]
    expected = sum(simulated_input(u, 16, 32, 1).astype(np.uint64) for u in res.summed)
    np.testing.assert_array_equal(res.total, (expected % (1 << 32)).astype(np.uint32))


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_executor_flags_are_in_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--executor", "--ray-address", "--workers"):
        assert flag in out


def test_executor_ray_without_ray_exits_2(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    rc = cli.main(["simulate", "--clients", "4", "--length", "3", "--executor", "ray", "--quiet"])
    assert rc == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err


@needs_ray
def test_simulate_under_ray_200_clients_20pct_dropout_exact_sum(ray_cluster: None) -> None:
    params = choose_graph_params(200, dropout=0.2)
    ex = make_executor("ray", workers=2)
    try:
        sim = simulate(200, 64, graph=params.graph, neighbors=params.k, threshold=params.t,
                       dropout=0.2, seed=3, pool_factory=ex.simulation_pool_factory())
    finally:
        ex.close()
    assert sim.ok  # the unmasked sum equals the plaintext sum of the summed clients
    res = sim.result
    assert 120 <= len(res.summed) < 200 and len(res.dropped) == 200 - len(res.summed)
    assert len(res.stage("masked").client_seconds) == len(res.summed)


@needs_ray
def test_simulate_same_round_wherever_clients_run(ray_cluster: None) -> None:
    kw = dict(graph="harary", neighbors=8, threshold=6, dropout=0.2, dropout_stage="share", seed=5)
    ex = make_executor("ray", workers=2)
    try:
        remote = simulate(30, 16, pool_factory=ex.simulation_pool_factory(), **kw).result  # type: ignore[arg-type]
    finally:
        ex.close()
    local = simulate(30, 16, **kw).result  # type: ignore[arg-type]
    np.testing.assert_array_equal(local.total, remote.total)
    assert local.session_id == remote.session_id  # same keys: a function of (seed, id)
    assert local.survivors == remote.survivors and local.refused == remote.refused
    assert [(s.stage, s.total_up, s.total_down) for s in local.stages] == \
        [(s.stage, s.total_up, s.total_down) for s in remote.stages]


@needs_ray
def test_simulate_cli_under_ray(ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    args = parser.parse_args(["--clients", "12", "--length", "20", "--graph", "harary",
                              "--neighbors", "6", "--dropout", "0.1", "--executor", "ray",
                              "--workers", "2", "--quiet"])
    assert simulate_cli.run(args) == 0
    assert "OK: the unmasked sum equals the plaintext sum" in capsys.readouterr().out


@needs_ray
def test_a_client_error_reaches_the_server_side_as_its_own_type(ray_cluster: None) -> None:
    from secure_fed.executor.hosts import SimulationRole
    from secure_fed.executor.ray_pool import RayClientPool

    ex = make_executor("ray", workers=2)
    try:
        pool = RayClientPool(ex._ray, ex.spawn(SimulationRole(0)))  # type: ignore[attr-defined]
        cfg = ProtocolConfig(0, tuple(range(6)), 4, 32, 3, "harary", 2, authenticated=True)
        pool.open(cfg)
        replies = list(pool.exchange("advertise", dict.fromkeys(cfg.cohort)))
        assert sorted(r.client_id for r in replies) == list(cfg.cohort)
        with pytest.raises(ProtocolError) as err:  # a malformed server message
            list(pool.exchange("share", dict.fromkeys(cfg.cohort, b"\x01garbage")))
        assert not isinstance(err.value, ex._ray.exceptions.RayTaskError)  # type: ignore[attr-defined]
    finally:
        ex.close()


TRAIN = dict(clients=6, cohort=5, rounds=3, batch_size=64, rounds_of_hp=5, meta_steps=10,
             meta_per_class=5, hardened=False, seed=4, dropout=0.2, secagg="secagg+",
             dp="sample", noise_multiplier=1.5, target_epsilon=None,
             # 5 clients at 20% dropout meet no colluder bound at a tight halting target
             max_colluders=0, halting_bits=2.0)


def _train(executor: str, **kw: object) -> list[dict]:
    cfg = TrainConfig(**{**TRAIN, **kw, "executor": executor, "workers": 2, "out": "unused"})
    digests: list[str] = []
    t = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    apply = t.server.apply

    def record(agg, bc):  # type: ignore[no-untyped-def]
        digests.append(agg.digest())
        return apply(agg, bc)

    t.server.apply = record  # type: ignore[method-assign]
    try:
        t.run()
    finally:
        t.close()
    return [{**{k: v for k, v in r.items() if k != "seconds"}, "digest": d}
            for r, d in zip(t.history, digests, strict=True)]


@needs_ray
@pytest.mark.parametrize("secagg", ["secagg+", "off"])
def test_digits_training_identical_under_local_and_ray(ray_cluster: None, secagg: str) -> None:
    # the SecAgg+ case also splits the budget: the release's noise reaches the actors too
    kw = {"secagg": secagg, "release_noise_ratio": 2.0} if secagg != "off" else {
        "secagg": "off", "noise_placement": "local", "mechanism": "gaussian", "rounds": 1}
    local = _train("local", **kw)
    remote = _train("ray", **kw)
    assert len(local) == kw.get("rounds", 3)
    assert [r["digest"] for r in remote] == [r["digest"] for r in local]
    assert [r["accuracy"] for r in remote] == [r["accuracy"] for r in local]
    assert remote == local  # every metric: loss, epsilon, survivors, personalized accuracy


class _Counted:
    """An actor handle that records every method call the driver makes on it."""

    def __init__(self, actor: object, calls: list[tuple[str, tuple]]) -> None:
        self._actor, self._calls = actor, calls

    def __getattr__(self, name: str) -> object:
        method, calls = getattr(self._actor, name), self._calls

        class _Method:
            def remote(self, *args: object) -> object:
                calls.append((name, args))
                return method.remote(*args)

        return _Method()


@needs_ray
def test_identities_are_registered_once_per_run_not_every_round(ray_cluster: None) -> None:
    from protocol.runner import run_round
    from secure_fed.executor.hosts import SimulationRole
    from secure_fed.executor.ray_pool import RayClientPool

    ex = make_executor("ray", workers=2)
    calls: list[tuple[str, tuple]] = []
    try:
        actors = [_Counted(a, calls) for a in ex.spawn(SimulationRole(1))]  # type: ignore[attr-defined]
        pool = RayClientPool(ex._ray, actors)  # type: ignore[attr-defined]
        registered: list[int] = []

        def round_of(r: int, cohort: tuple[int, ...]) -> None:
            cfg = ProtocolConfig(r, cohort, 8, 32, 4, "harary", 4, authenticated=True)
            calls.clear()
            res = run_round(pool, cfg, None, pool.open(cfg))
            assert res.summed == cohort
            registered.extend(u for name, args in calls if name == "register" for u in args[0])

        round_of(1, tuple(range(8)))
        assert sorted(registered) == list(range(8))  # first round: everyone, once
        for r in (2, 3):
            registered.clear()
            round_of(r, tuple(range(8)))
            assert registered == []  # same clients: no registration at all
        registered.clear()
        round_of(4, (0, 1, 2, 3, 4, 5, 8, 9))  # two clients join
        assert sorted(registered) == [8, 9]
    finally:
        ex.close()


@needs_ray
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_no_authenticated_training_runs_on_both_executors(ray_cluster: None, executor: str) -> None:
    # the clients in the actors hold an explicit permissive policy: before, they got the
    # default one and refused the unauthenticated config with PolicyViolation
    rounds = _train(executor, authenticated=False, rounds=1)
    assert len(rounds) == 1 and not rounds[0].get("aborted") and rounds[0]["survivors"] >= 3
