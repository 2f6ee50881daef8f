"""The ``ray`` executor: clients live in Ray actors, the server stays in this process.

Each actor (:class:`secure_fed.executor.hosts.ClientHost`) holds the clients ``u`` with
``u % workers == index`` (for training, only their data: :mod:`secure_fed.executor.training`).
Identities are registered once per run: the pool keeps the identity public keys it has
collected and asks an actor only for clients it has not seen, and an actor learns each
public key once (the actors' directory grows only when new clients join a round).

Per protocol stage the server's messages go out in batches, a bounded number per actor in
flight, and replies are fed to the server as each batch returns, so the server streams (it
holds at most ``2 * workers`` batches of replies, each of about
:data:`secure_fed.executor.ray_pool.BATCH_BYTES`). A message many clients receive (the key broadcast) is put
into Ray's object store once and shared by every batch.

A local Ray instance is limited to ``--workers`` CPUs (default: this machine's), starts
without the dashboard, does not forward worker logs, and is shut down on :meth:`close`;
with ``--ray-address`` the executor joins a running cluster and leaves it running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from protocol.config import ProtocolConfig
from secure_fed.executor.hosts import ClientHost, HostRole, SimulationRole
from secure_fed.executor.ray_pool import RayClientPool
from secure_fed.executor.raysupport import start_ray

if TYPE_CHECKING:
    from protocol.simulator import PoolFactory
    from secure_fed.config import TrainConfig
    from secure_fed.executor.training import ClientKit, RemoteTrainingClients


class RayExecutor:
    """Clients in Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 0) -> None:
        ray, self._started = start_ray(address, workers)
        self._ray = ray
        res = ray.cluster_resources()
        self.cpus = float(res.get("CPU", 1.0))
        self.gpus = float(res.get("GPU", 0.0))
        self.workers = workers or max(1, int(self.cpus))
        self._actors: list[Any] = []

    # -- actors -------------------------------------------------------------------------
    def spawn(self, role: HostRole | Sequence[HostRole], gpu: bool = False) -> list[Any]:
        """Start ``workers`` hosts playing ``role`` (replacing any earlier ones): the same
        role for all, or one role per worker (index ``i`` hosts clients ``u % workers == i``).

        Each asks for an equal share of the CPUs (so all fit at once) and, when ``gpu`` and
        the cluster reports GPUs, an equal fraction of them.
        """
        roles = list(role) if isinstance(role, Sequence) else [role] * self.workers
        if len(roles) != self.workers:
            raise ValueError(f"spawn: {len(roles)} roles for {self.workers} workers")
        self.kill_actors()
        ray = self._ray
        opts: dict[str, Any] = {"num_cpus": min(1.0, self.cpus / self.workers)}
        if gpu and self.gpus > 0:
            opts["num_gpus"] = min(1.0, self.gpus / self.workers)
        cls = ray.remote(ClientHost)
        self._actors = [cls.options(**opts).remote(r) for r in roles]
        ray.get([a.ready.remote() for a in self._actors])
        return self._actors

    def worker_peak_rss(self) -> list[int]:
        """Peak resident memory of each live worker (bytes), for benchmarks."""
        return list(self._ray.get([a.peak_rss_bytes.remote() for a in self._actors]))

    def worker_cpu_seconds(self) -> list[float]:
        """CPU seconds each live worker has used (user + system), for benchmarks."""
        return list(self._ray.get([a.cpu_seconds.remote() for a in self._actors]))

    def kill_actors(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []

    def close(self) -> None:
        """Stop the actors, and the Ray instance if this executor started it."""
        if self._ray.is_initialized():
            self.kill_actors()
            if self._started:
                self._ray.shutdown()
        self._started = False

    # -- simulate -----------------------------------------------------------------------
    def simulation_pool_factory(self) -> PoolFactory | None:
        def factory(config: ProtocolConfig, seed: int) -> tuple[RayClientPool, Mapping[int, bytes] | None]:
            actors = self.spawn(SimulationRole(seed))
            pool = RayClientPool(self._ray, actors)
            return pool, pool.open(config)

        return factory

    # -- train --------------------------------------------------------------------------
    def training_clients(self, cfg: TrainConfig, kit: Callable[[list[int]], ClientKit]) -> RemoteTrainingClients | None:
        """Actors holding the run's clients, each with only its own clients' shards
        (``kit(ids)``: their kit, cut by the run that owns them)."""
        from secure_fed.executor.training import RemoteTrainingClients, TrainingRole

        ids = list(range(cfg.clients))
        kits = [kit([u for u in ids if u % self.workers == i]) for i in range(self.workers)]
        actors = self.spawn([TrainingRole(k) for k in kits], gpu=cfg.device != "cpu")
        return RemoteTrainingClients(self._ray, actors)
