"""The server side of the ``ray`` executor's wire: a :class:`protocol.runner.ClientPool` over
Ray actors.

Per protocol stage the server's messages go out in batches, a bounded number per actor in
flight, and replies are fed to the server as each batch returns, so the server streams (it
holds at most ``2 * workers`` batches of replies, each of about :data:`BATCH_BYTES`). A
message many clients receive (the key broadcast) is put into Ray's object store once and
shared by every batch. Identities are registered once per run: the pool keeps the identity
public keys it has collected and asks an actor only for clients it has not seen.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from protocol.config import ProtocolConfig
from protocol.runner import ClientReply

BATCH_BYTES = 4 << 20  # target size of one batch of messages or replies (bytes)
MAX_BATCH = 256  # clients per batch
IN_FLIGHT = 2  # batches queued per actor: one running, one waiting


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
