"""The ``ray`` executor: clients live in Ray actors, the server stays in this process.

Each actor (:class:`secure_fed.executor.hosts.ClientHost`) holds the clients ``u`` with
``u % workers == index`` (for training, only their data: :mod:`secure_fed.executor.training`).
Identities are registered once per run: the pool keeps the identity public keys it has
collected and asks an actor only for clients it has not seen, and an actor learns each
public key once (the actors' directory grows only when new clients join a round).

Per protocol stage the server's messages go out in batches, a bounded number per actor in
flight, and replies are fed to the server as each batch returns, so the server streams (it
holds at most ``2 * workers`` batches of replies, each of about :data:`BATCH_BYTES`). A message many clients receive (the key broadcast) is put
into Ray's object store once and shared by every batch.

A local Ray instance is limited to ``--workers`` CPUs (default: this machine's), starts
without the dashboard, does not forward worker logs, and is shut down on :meth:`close`;
with ``--ray-address`` the executor joins a running cluster and leaves it running.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from protocol.config import ProtocolConfig
from protocol.runner import ClientReply
from secure_fed.executor.hosts import ClientHost, HostRole, SimulationRole
from secure_fed.executor.raysupport import start_ray

if TYPE_CHECKING:
    from protocol.simulator import PoolFactory
    from secure_fed.config import TrainConfig
    from secure_fed.executor.training import ClientKit, RemoteTrainingClients

BATCH_BYTES = 4 << 20  # target size of one batch of messages or replies (bytes)
MAX_BATCH = 256  # clients per batch
IN_FLIGHT = 2  # batches queued per actor: one running, one waiting


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


class RayClientPool:
    """A :class:`protocol.runner.ClientPool` over Ray actors (server side of the wire)."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self._ray = ray
        self.actors = actors
        self.config: ProtocolConfig | None = None
        self.identity_keys: dict[int, bytes] = {}  # every client registered so far

    def register(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Identity public keys of ``ids``; asks the actors only for clients not registered
        before (their first round), so a run registers each client once. Returns the
        newly registered keys."""
        new = [u for u in ids if u not in self.identity_keys]
        if not new:
            return {}
        fresh: dict[int, bytes] = {}
        calls = [a.register.remote(p) for a, p in zip(self.actors, self.split(new), strict=True) if p]
        for keys in self._ray.get(calls):
            fresh.update(keys)
        self.identity_keys.update(fresh)
        return fresh

    def owner(self, u: int) -> int:
        return u % len(self.actors)

    def split(self, ids: list[int]) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in self.actors]
        for u in ids:
            parts[self.owner(u)].append(u)
        return parts

    def open(self, config: ProtocolConfig, extra: Any = None) -> Mapping[int, bytes] | None:
        """Build the round's clients in their actors; returns their identity public keys
        (what a server needs in authenticated mode), else None. Clients not registered
        before are registered now, and only their keys travel to the actors."""
        ray = self._ray
        self.config = config
        parts = self.split(list(config.cohort))
        pub: dict[int, bytes] | None = None
        fresh: dict[int, bytes] = {}
        if config.authenticated:
            fresh = self.register(config.cohort)
            pub = {u: self.identity_keys[u] for u in config.cohort}
        fresh_ref = ray.put(fresh) if fresh else None
        ray.get([a.open_round.remote(config, p, fresh_ref, extra)
                 for a, p in zip(self.actors, parts, strict=True)])
        return pub

    def close(self) -> list[Any]:
        """Forget the round's client states; returns each actor's per-round outputs."""
        return list(self._ray.get([a.close_round.remote() for a in self.actors]))

    def _batch_size(self, stage: str, messages: Mapping[int, bytes | None], shared: Any) -> int:
        own = max((len(m) for m in messages.values() if m is not None and m is not shared),
                  default=0)
        up = 0
        if stage == "masked" and self.config is not None:
            up = self.config.length * self.config.entry_bytes
        return max(1, min(MAX_BATCH, BATCH_BYTES // max(own, up, 1)))

    def exchange(self, stage: str, messages: Mapping[int, bytes | None]) -> Iterator[ClientReply]:
        ray = self._ray
        counts = Counter(id(m) for m in messages.values() if m is not None)
        shared: bytes | None = None
        if counts:
            top, n = counts.most_common(1)[0]
            if n > 1:
                shared = next(m for m in messages.values() if id(m) == top)
        shared_ref = ray.put(shared) if shared is not None else None
        size = self._batch_size(stage, messages, shared)
        queues: list[deque[list[int]]] = []
        for part in self.split(sorted(messages)):
            queues.append(deque(part[i:i + size] for i in range(0, len(part), size)))
        inflight: dict[Any, int] = {}

        def submit(a: int) -> None:
            if queues[a]:
                ids = queues[a].popleft()
                own = {u: messages[u] for u in ids
                       if messages[u] is not None and messages[u] is not shared}
                inflight[self.actors[a].exchange.remote(stage, ids, own, shared_ref)] = a

        for a in range(len(self.actors)):
            for _ in range(IN_FLIGHT):
                submit(a)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            a = inflight.pop(ready[0])
            submit(a)
            for reply in self._get(ready[0]):
                yield ClientReply(*reply)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):  # the client's own typed error
                raise cause from None
            raise
