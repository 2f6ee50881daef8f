"""Executor efficiency: per-actor client kits, and the server reusing the graph's ordering.

Ray-free (fast). The Ray side of the same work (identities registered once per run, the
local-vs-Ray digests) is in ``tests/test_executor.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch

import protocol.graph as graph_mod
from protocol.config import ProtocolConfig
from protocol.dropout import DropoutSchedule
from protocol.graph import build_graph, harary_sets, random_order
from protocol.runner import run_secure_round
from protocol.server import SecAggServer
from protocol.simulator import simulated_input
from secure_fed.config import TrainConfig
from secure_fed.executor.training import TrainingRole
from secure_fed.fl.program import cpu_threads, new_side
from secure_fed.run.trainer import Trainer

CFG = dict(clients=6, cohort=5, rounds=2, batch_size=64, rounds_of_hp=5, meta_steps=10,
           meta_per_class=5, hardened=False, seed=4, dropout=0.2, secagg="secagg+",
           dp="sample", noise_multiplier=1.5, target_epsilon=None, out="unused",
           # 5 clients at 20% dropout meet no colluder bound at a tight halting target
           max_colluders=0, halting_bits=2.0)


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    t = Trainer(TrainConfig(**CFG), progress=False, log=lambda s: None, write_outputs=False)
    t.set_noise(t.plan_noise())
    return t


# -- item: an actor holds only its own clients ------------------------------------------------
def test_a_kit_holds_only_its_clients_shards(trainer: Trainer) -> None:
    kit = trainer.client_kit([1, 3, 5])
    assert sorted(kit.shards) == [1, 3, 5]
    for u, shard in kit.shards.items():
        assert shard.x.equal(trainer.shards[u].x.cpu()) and shard.y.equal(trainer.shards[u].y.cpu())
        # its own storage, not a view into the dataset (a view would pickle all of it)
        assert shard.x.untyped_storage().nbytes() == shard.x.nbytes
    assert kit.nbytes == sum(trainer.shards[u].x.nbytes + trainer.shards[u].y.nbytes for u in (1, 3, 5))
    assert kit.nbytes < trainer.data.train_x.nbytes
    assert kit.model is not trainer.client_model  # a copy: the trainer's model is untouched
    assert kit.program is trainer.program  # what the clients run is the trainer's own
    assert cpu_threads(kit.program.cfg) == torch.get_num_threads() == 1  # small models: one thread


@pytest.mark.parametrize("final", [False, True])
def test_kit_work_is_bit_identical_to_the_trainers(trainer: Trainer, final: bool) -> None:
    """The actor-side client work equals Trainer.client_work: upload, loss, DP-SGD plan,
    personalized accuracy (the final round), for every client, in the trainer's order."""
    bc = trainer.server.broadcast(2 if final else 1)
    role = TrainingRole(trainer.client_kit(list(range(trainer.cfg.clients))))
    role.begin_round(bc, final, trainer.round_setup(),
                     (trainer.test_x, trainer.test_y) if final else None)
    side = new_side()
    for cid in trainer.cohort(bc.round_id):
        ours = role.client_work(cid)
        theirs = trainer.client_work(bc, cid, side, final)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    assert role.finish_round() == side
    assert bool(side["pers"]) == final


def test_kits_and_setups_unpickle_without_the_trainer_or_dataset_stack(trainer: Trainer,
                                                                       tmp_path: Any) -> None:
    """What an actor receives loads without secure_fed.run.trainer, torchvision or sklearn
    (the dataset stack, which the actors no longer pay for in memory)."""
    path = tmp_path / "kit.pkl"
    path.write_bytes(cloudpickle.dumps((trainer.client_kit([0, 2]), trainer.round_setup())))
    code = (
        "import pickle, sys\n"
        "import secure_fed.executor.training as tr\n"
        f"kit, setup = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "role = tr.TrainingRole(kit)\n"
        "assert setup.ring is not None and setup.noise is not None\n"
        "heavy = [m for m in ('secure_fed.run.trainer', 'secure_fed.fl.data.datasets', 'torchvision',"
        " 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


# -- item: the server reuses the graph builder's ordering ---------------------------------------
def _counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real: Callable[[tuple[int, ...], bytes], list[int]] = graph_mod.random_order

    def counted(ids: tuple[int, ...], seed: bytes) -> list[int]:
        calls.append(ids)
        return real(ids, seed)

    monkeypatch.setattr(graph_mod, "random_order", counted)
    monkeypatch.setattr("protocol.server.random_order", counted, raising=False)
    graph_mod._GRAPHS.clear()
    return calls


def test_the_servers_owner_order_is_the_graph_builders() -> None:
    cfg = ProtocolConfig(3, tuple(range(0, 40, 3)), 8, 32, 4, "harary", 6, authenticated=False)
    seed = bytes(range(32))  # in a round: the seed of the reveals (protocol.commitments)
    graph = build_graph(cfg, cfg.cohort, seed)
    order = random_order(cfg.cohort, seed)
    assert graph.order == tuple(order) and sorted(order) == list(cfg.cohort)
    assert order != list(cfg.cohort)  # a real shuffle, so the check below means something
    assert all(harary_sets(order, 6)[u] == graph.neighbors_of(u) for u in cfg.cohort)
    server = SecAggServer(cfg)
    server.graph = graph  # what the server's reveal stage sets
    assert server._owner_order() == order
    complete = ProtocolConfig(3, (1, 4, 9, 10), 8, 32, 3, "complete", None, authenticated=False)
    server = SecAggServer(complete)
    server.graph = build_graph(complete, complete.cohort, seed)
    assert server._owner_order() == [1, 4, 9, 10]


def test_a_round_draws_the_harary_ordering_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients and server share the one graph build: the unmasking step (here with dropped
    clients, whose keys the server reconstructs) does not draw the ordering again."""
    calls = _counting(monkeypatch)
    ids = tuple(range(12))
    cfg = ProtocolConfig(7, ids, 16, 32, 4, "harary", 6, authenticated=False)
    drops = DropoutSchedule({"masked": frozenset({2, 9})})
    res = run_secure_round(lambda u: simulated_input(u, 16, 32, 1), cfg, drops)
    assert sorted(res.dropped) == [2, 9]
    expected = sum(simulated_input(u, 16, 32, 1).astype(np.uint64) for u in res.summed)
    np.testing.assert_array_equal(res.total, (expected % (1 << 32)).astype(np.uint32))
    assert calls == [ids]

