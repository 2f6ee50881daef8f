"""Executors: where clients' round work runs. ``local`` (in this process, the default) or
``ray`` (Ray actors, each holding a shard of the clients, on this machine or a cluster).

The server side is the same under both: one :class:`protocol.server.SecAggServer` that
receives bytes only, driven by :func:`protocol.runner.run_round`. An executor only changes
where the clients' state (data shard, model, protocol state machine) lives and where their
work runs. With the same seed (reproducible mode) both give the same aggregates and
metrics, because every client's randomness is a function of (seed, round, client id).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from secure_fed.config import EXECUTORS
from secure_fed.errors import ConfigError

if TYPE_CHECKING:
    from protocol.simulator import PoolFactory
    from secure_fed.config import TrainConfig
    from secure_fed.executor.training import ClientKit, RemoteTrainingClients



class Executor(Protocol):
    """Runs clients somewhere; ``close`` releases whatever it started."""

    name: str
    workers: int

    def simulation_pool_factory(self) -> PoolFactory | None:
        """Where ``simulate`` builds its clients (None: in this process)."""
        ...

    def training_clients(self, cfg: TrainConfig, kit: Callable[[list[int]], ClientKit]) -> RemoteTrainingClients | None:
        """Remote hosts of a training run's clients (None: the run runs them itself).
        ``kit(ids)``: the :class:`ClientKit` of clients ``ids``, cut by the run that owns them."""
        ...

    def close(self) -> None:
        ...


class LocalExecutor:
    """Everything in this process: the in-process client pool of :mod:`protocol.runner`."""

    name = "local"
    workers = 1

    def simulation_pool_factory(self) -> PoolFactory | None:
        return None

    def training_clients(self, cfg: TrainConfig, kit: Callable[[list[int]], ClientKit]) -> RemoteTrainingClients | None:
        return None

    def close(self) -> None:
        return None


def check_executor(name: str, workers: int) -> None:
    """Validate ``--executor`` and ``--workers`` (ConfigError naming the flag)."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor: must be one of {', '.join(EXECUTORS)} (got {name!r})")
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers: must be >= 0 (0 = one per CPU; got {workers!r})")


def make_executor(name: str = "local", address: str | None = None, workers: int = 0) -> Executor:
    """The executor called ``name``. ``ray``: connects to ``address`` (a running cluster) or
    starts a local Ray instance limited to ``workers`` CPUs (0: all of this machine's);
    ConfigError with the install hint when Ray is missing."""
    check_executor(name, workers)
    if name == "local":
        return LocalExecutor()
    from secure_fed.executor.ray_executor import RayExecutor

    return RayExecutor(address, workers)


def add_arguments(group: argparse._ActionsContainer, default: str = "local") -> None:
    """The ``--executor/--ray-address/--workers/--server-workers`` flags (shared by train
    and simulate): where the clients' and the server's work runs, never what it computes."""
    group.add_argument("--executor", choices=EXECUTORS, default=default,
                       help="where clients run: local = in this process; ray = Ray actors, each "
                            "holding a shard of the clients (needs the ray extra)")
    group.add_argument("--ray-address", default=None,
                       help="address of a running Ray cluster (default: start a local Ray "
                            "instance limited to --workers CPUs, shut down at exit)")
    group.add_argument("--workers", type=int, default=0,
                       help="Ray actors holding clients (0 = one per CPU of this machine, or "
                            "of the cluster with --ray-address)")
    group.add_argument("--server-workers", type=int, default=1,
                       help="processes for the server's unmasking (regenerating dropped clients' "
                            "pairwise masks); 1 = the server's own process. Pays off with many "
                            "dropped clients and long vectors; small rounds stay in one process")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "add_arguments", "check_executor",
           "make_executor"]
