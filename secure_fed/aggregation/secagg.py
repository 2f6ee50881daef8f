"""Aggregators in the ring Z_{2^b}: a trusted in-ring sum and SecAgg / SecAgg+.

Client side, each upload goes float vector -> per-block fixed-point encoding (clip to the
block's declared bound, scale by the block's gamma, stochastic rounding) -> optional
integer noise (dp/) -> the protocol's masking. Server side, the protocol unmasks only the
survivors' sum, which is decoded block by block into an :class:`Aggregate`.

Each block's gamma is the largest that keeps the worst-case cohort sum, plus a
``z``-sigma allowance for integer noise, inside (-2^(b-1), 2^(b-1)): the overflow check
counts clients, and a config that cannot fit is refused before any client works.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.codec import FixedPointCodec
from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol import DropoutSchedule, ProtocolConfig, run_secure_round
from protocol.config import NONCE_BYTES, fresh_nonce
from protocol.dropout import STAGES
from protocol.errors import ProtocolAbort, RevealMissing
from protocol.identities import IdentityStore, client_identity
from protocol.params import RoundParams, round_params
from protocol.policy import ClientPolicy
from protocol.runner import RoundResult, run_round
from secure_fed.aggregation.layout import Aggregate, ClientWork, VectorLayout
from secure_fed.config import DEFAULT_HALTING_BITS, DEFAULT_MAX_COLLUDERS
from secure_fed.errors import ConfigError, EncodingOverflow

NOISE_TAIL_Z = 12.0
"""Integer-noise allowance in standard deviations (P(|N| > 12 sigma) < 1e-32 per entry)."""


@dataclass(frozen=True)
class LayoutCodec:
    """One :class:`FixedPointCodec` per block of a layout, all in the same ring Z_{2^bits}."""

    layout: VectorLayout
    bits: int
    codecs: tuple[FixedPointCodec, ...]

    @classmethod
    def for_cohort(
        cls, layout: VectorLayout, bits: int, n: int, noise_std: Mapping[str, float] | None = None
    ) -> LayoutCodec:
        """Largest per-block gamma such that a sum of ``n`` uploads plus integer noise of
        total standard deviation ``noise_std[block]`` (input units) cannot wrap the ring.

        The blocks named in ``noise_std`` (those a DP mechanism covers) share one gamma, the
        smallest of theirs: the release is clipped jointly to one L2 norm and noised with one
        integer scale, so an encoded unit must mean the same in every released block. With
        per-block gammas a block with a smaller bound would get a larger gamma, hence less
        noise in input units and a larger encoded sensitivity than the accountant assumes.
        """
        if n < 1:
            raise ConfigError(f"cohort size must be >= 1, got {n}")
        noise_std = noise_std or {}
        half = float(1 << (bits - 1))
        room = half - 1 - n  # each client's stochastic rounding may add one unit
        needs = {b.name: n * b.bound + NOISE_TAIL_Z * noise_std[b.name]
                 for b in layout.blocks if b.name in noise_std and b.bound is not None and b.bound > 0}
        widest = max(needs.values(), default=0.0)  # the noised block that sets the shared gamma
        codecs = []
        for b in layout.blocks:
            if b.bound is None or not b.bound > 0:
                raise ConfigError(f"block {b.name!r} has no declared bound; secure aggregation needs one")
            need = widest if b.name in needs else n * b.bound
            gamma = room / need
            if gamma < 1.0:
                raise EncodingOverflow(
                    f"--bits {bits}: block {b.name!r} needs a range of {need:.3g} for a cohort of {n}, "
                    f"leaving under one integer step per unit; raise --bits or shrink the cohort"
                )
            codecs.append(FixedPointCodec(bits, gamma, b.bound))
        out = cls(layout, bits, tuple(codecs))
        for c in out.codecs:
            c.check_cohort(n)
        return out

    def gamma(self, name: str) -> float:
        return self.codecs[self.layout.names().index(name)].gamma

    def encode(self, vector: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        """Client side: the float upload as ring words (uint32 for bits <= 32, else uint64)."""
        out = np.empty(self.layout.size, dtype=dtype_for_bits(self.bits))
        for b, c in zip(self.layout.blocks, self.codecs, strict=True):
            out[b.offset : b.offset + b.size] = c.encode(vector[b.offset : b.offset + b.size], rng)
        return out

    def decode_sum(self, words: np.ndarray, n: int) -> np.ndarray:
        """Server side: the ring sum of ``n`` uploads back to float64 input units."""
        out = np.empty(self.layout.size, dtype=np.float64)
        for b, c in zip(self.layout.blocks, self.codecs, strict=True):
            out[b.offset : b.offset + b.size] = c.decode_sum(words[b.offset : b.offset + b.size], n)
        return out

    def error_bound(self, n: int) -> dict[str, float]:
        """Worst-case decoding error per block for a sum of ``n`` (input units), noise excluded."""
        return {b.name: c.error_bound(n) for b, c in zip(self.layout.blocks, self.codecs, strict=True)}


PostEncode = Callable[[int, int, np.ndarray, LayoutCodec, KeystreamRNG], np.ndarray]
"""(round, client, words, codec, rng) -> words: client-side step after encoding (integer noise)."""


@dataclass(frozen=True)
class RingSettings:
    """Public parameters of ring aggregation for a whole run."""

    bits: int = 32
    noise_std: Mapping[str, float] | None = None  # total integer-noise std per block (input units)
    post_encode: PostEncode | None = None
    hardened: bool = True
    seed: int = 0  # reproducible mode only: seeds rounding randomness (never in hardened mode)


class _RingBase:
    name = "ring"

    def __init__(self, settings: RingSettings) -> None:
        self.settings = settings

    def _client_rng(self, round_id: int, cid: int) -> KeystreamRNG:
        if self.settings.hardened:
            return KeystreamRNG.hardened()
        return KeystreamRNG.from_seed(self.settings.seed, f"client-encode/{round_id}/{cid}")

    def client_encoder(self, round_id: int, codec: LayoutCodec, work: Mapping[int, ClientWork]) -> Callable[[int], np.ndarray]:
        """Client side: cid -> its upload encoded into the ring (with the ring noise, if any),
        computed where the client runs (this process, or an executor's worker)."""
        def client_input(cid: int) -> np.ndarray:  # runs on client cid
            rng = self._client_rng(round_id, cid)
            words = codec.encode(work[cid](), rng)
            if self.settings.post_encode is not None:
                words = self.settings.post_encode(round_id, cid, words, codec, rng)
            return words

        return client_input


class RingAggregator(_RingBase):
    """Trusted aggregator in the ring: same encoding and noise as SecAgg, no masking.

    The reference point of the contract test: SecAgg and SecAgg+ must return exactly this
    ring sum for the same encoded inputs.
    """

    name = "plaintext-ring"

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        cohort = sorted(work)
        codec = LayoutCodec.for_cohort(layout, self.settings.bits, len(cohort), self.settings.noise_std)
        encode = self.client_encoder(round_id, codec, work)
        total = np.zeros(layout.size, dtype=dtype_for_bits(self.settings.bits))
        for cid in cohort:
            np.add(total, encode(cid), out=total)
        if self.settings.bits < total.dtype.itemsize * 8:
            total &= total.dtype.type((1 << self.settings.bits) - 1)
        vec = codec.decode_sum(total, len(cohort))
        entry = (self.settings.bits + 7) // 8
        return Aggregate(vec, len(cohort), layout, round_id, {
            "aggregator": self.name, "survivors": {"masked": cohort}, "summed": cohort, "dropped": [],
            "bytes_up_per_client": entry * layout.size, "codec_gamma": {b.name: codec.gamma(b.name) for b in layout.blocks},
            "error_bound": codec.error_bound(len(cohort)),
        })


MAX_ATTEMPTS = 3
"""Protocol rounds tried per training round: the first and up to two restarts after a
reveal-stage dropout (each with fresh keys, nonce and graph among the clients still alive)."""


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg / SecAgg+ parameters (``neighbors``/``threshold`` None: chosen per cohort).

    ``max_colluders`` c and ``halting_bits``: the stated adversary and the halting target
    from which :func:`protocol.params.round_params` chooses (k, t) (see :func:`choose_round`).
    """

    graph: str = "harary"  # "complete" = SecAgg, "harary" = SecAgg+
    neighbors: int | None = None
    threshold: int | None = None
    authenticated: bool = True
    dropout: float = 0.0
    dropout_seed: int = 0
    server_workers: int = 1  # processes for the server's unmasking (1: this one only)
    max_colluders: int = DEFAULT_MAX_COLLUDERS
    halting_bits: float = DEFAULT_HALTING_BITS

    def client_policy(self) -> ClientPolicy:
        """Client side: the weakest config a client of this run accepts. Authenticated runs:
        authentication, a fresh round nonce and (k, t) tolerating ``max_colluders`` against
        an active server. Unauthenticated runs: an explicit permissive policy (the run then
        holds only against a passive server, and says so)."""
        if not self.authenticated:
            return ClientPolicy.permissive()
        return ClientPolicy(require_authentication=True, require_nonce=True,
                            min_colluders=self.max_colluders)


def choose_round(n: int, graph: str, neighbors: int | None, threshold: int | None,
                 dropout: float, max_colluders: int, authenticated: bool,
                 halting_bits: float = DEFAULT_HALTING_BITS) -> RoundParams:
    """The (k, t) of a cohort of ``n`` and the guarantee they deliver: the one place where
    ``train`` and ``simulate`` choose them (through :func:`protocol.params.round_params`).

    ``graph``: ``complete`` (SecAgg) or ``harary`` (SecAgg+: the smallest even Harary degree
    meeting the colluder bound and the ``halting_bits`` target, else the complete graph; a
    given ``neighbors`` is used as is). A k fixed by the caller (complete graph, given
    ``neighbors``) is held to the colluder bound only; its halting bound is reported. An explicit ``threshold`` below what ``max_colluders``
    needs is refused with a :class:`ConfigError` naming the flag to change.
    """
    kind = "complete" if graph == "complete" else ("harary" if neighbors is not None else "auto")
    # the halting target chooses k; a k fixed by the caller (the complete graph, --neighbors)
    # is only checked against the colluder bound, and its halting bound is reported
    target = halting_bits if kind == "auto" else 0.0
    return round_params(n, dropout, max_colluders, authenticated, graph=kind,
                        neighbors=None if graph == "complete" else neighbors,
                        halting_bits=target, threshold=threshold)


class SecAggAggregator(_RingBase):
    """SecAgg (complete graph) or SecAgg+ (Harary graph): the server learns only the sum.

    ``remote``: clients hosted by an executor (:mod:`secure_fed.executor`), which then run
    the client side of the protocol where they live; None runs them in this process (their
    signing keys then live in :attr:`identities`, a :class:`protocol.identities.IdentityStore`).
    """

    def __init__(self, ring: RingSettings, secagg: SecAggSettings, remote: Any = None) -> None:
        super().__init__(ring)
        self.secagg = secagg
        self.name = "secagg" if secagg.graph == "complete" else "secagg+"
        self.remote = remote
        self.identities = IdentityStore(None if ring.hardened else ring.seed)

    def round_params(self, n: int, restart: bool = False, min_threshold: int = 0) -> RoundParams:
        """(k, t) for a cohort of ``n`` and the guarantee they deliver (see :func:`choose_round`).

        ``restart``: the cohort is what is left after a reveal-stage dropout, so it cannot be
        enlarged; if no SecAgg+ degree meets the halting target, the complete graph is taken
        (the most live holders per secret) with the t the colluder bound needs, and its
        halting bound is reported. The colluder bound is never relaxed. ``min_threshold``:
        a restart keeps at least the first attempt's t, so a sum never covers fewer clients
        than the noise plan assumed (distributed DP noise: any t survivors carry it all).
        """
        s = self.secagg
        if n < 3:
            raise ConfigError(f"--cohort: secure aggregation needs at least 3 clients per round, got {n}")
        try:
            p = choose_round(n, s.graph, s.neighbors, s.threshold, s.dropout, s.max_colluders,
                             s.authenticated, s.halting_bits)
        except ConfigError:
            if not restart:
                raise
            p = choose_round(n, "complete", None, s.threshold, s.dropout, s.max_colluders,
                             s.authenticated, s.halting_bits)
        if p.t < min_threshold:  # the complete graph has the most holders for that t
            p = choose_round(n, "complete", None, max(min_threshold, s.threshold or 0), s.dropout,
                             s.max_colluders, s.authenticated, s.halting_bits)
        return p

    def round_nonce(self, round_id: int, attempt: int = 0) -> bytes:
        """The fresh nonce of a protocol round: from the OS CSPRNG (hardened runs), or derived
        from the seed, the training round and the attempt (reproducible runs)."""
        if self.settings.hardened:
            return fresh_nonce()
        return KeystreamRNG.from_seed(self.settings.seed, f"nonce/{round_id}/{attempt}").bytes(NONCE_BYTES)

    def protocol_config(self, round_id: int, cohort: list[int], length: int,
                        attempt: int = 0, min_threshold: int = 0) -> ProtocolConfig:
        p = self.round_params(len(cohort), restart=attempt > 0, min_threshold=min_threshold)
        return ProtocolConfig(round_id, tuple(cohort), length, self.settings.bits, p.t, p.graph,
                              None if p.graph == "complete" else p.k, self.secagg.authenticated,
                              nonce=self.round_nonce(round_id, attempt))

    def client_identity(self, cid: int) -> SigningKeyPair:
        """Client side: client ``cid``'s long-term key (seeded by (seed, cid) when reproducible)."""
        return client_identity(cid, None if self.settings.hardened else self.settings.seed)

    def protocol_rng(self, round_id: int, cid: int, attempt: int = 0) -> KeystreamRNG | None:
        """Client side: the protocol randomness of ``cid`` in a round (None: the OS CSPRNG)."""
        if self.settings.hardened:
            return None
        return self._round_rng(round_id, attempt).spawn(f"client/{cid}")

    def _round_rng(self, round_id: int, attempt: int) -> KeystreamRNG:
        label = f"protocol/{round_id}" if attempt == 0 else f"protocol/{round_id}/{attempt}"
        return KeystreamRNG.from_seed(self.settings.seed, label)

    def _drops(self, round_id: int, cohort: list[int], attempt: int) -> DropoutSchedule:
        label = f"dropout/{round_id}" if attempt == 0 else f"dropout/{round_id}/{attempt}"
        stages = STAGES if self.secagg.authenticated else tuple(s for s in STAGES if s != "consistency")
        return DropoutSchedule.random(cohort, self.secagg.dropout, stages,
                                      KeystreamRNG.from_seed(self.secagg.dropout_seed, label))

    def _attempt(self, config: ProtocolConfig, codec: LayoutCodec, work: Mapping[int, ClientWork],
                 attempt: int) -> RoundResult:
        round_id, cohort = config.round_id, list(config.cohort)
        drops = self._drops(round_id, cohort, attempt)
        if self.remote is not None:  # clients run where the executor hosts them
            pool, identity_keys = self.remote.open_pool(config, codec, attempt)
            return run_round(pool, config, drops, identity_keys, server_workers=self.secagg.server_workers)
        rng = None if self.settings.hardened else self._round_rng(round_id, attempt)
        return run_secure_round(
            self.client_encoder(round_id, codec, work), config, drops,
            identities=self.identities.for_ids(cohort) if config.authenticated else None, rng=rng,
            server_workers=self.secagg.server_workers, policy=self.secagg.client_policy(),
        )

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        """One training round's secure sum. A dropout at the reveal stage aborts a protocol
        round by design (no subset of reveals may decide the graph); the round is then
        restarted as a fresh protocol round (fresh nonce, keys and graph; (k, t) chosen
        again for the smaller cohort) among the clients still alive, up to
        :data:`MAX_ATTEMPTS` protocol rounds in all, and each restart is recorded in the
        aggregate's ``restarts``. Any other abort, or the last attempt's, propagates
        (:class:`ProtocolAbort`: the training round is recorded as aborted)."""
        cohort = sorted(work)
        # the codec is fixed for the full cohort: a sum of fewer clients stays in range
        codec = LayoutCodec.for_cohort(layout, self.settings.bits, len(cohort), self.settings.noise_std)
        t0 = time.perf_counter()
        restarts: list[dict[str, Any]] = []
        alive = cohort
        first_t = 0  # a restart keeps at least the first attempt's t
        for attempt in range(MAX_ATTEMPTS):
            try:
                config = self.protocol_config(round_id, alive, layout.size, attempt, first_t)
            except ConfigError as exc:
                if attempt == 0:
                    raise
                raise ProtocolAbort(f"cannot restart with the {len(alive)} clients left after a "
                                    f"reveal-stage dropout: {exc}") from exc
            first_t = first_t or config.threshold
            try:
                result = self._attempt(config, codec, work, attempt)
                break
            except RevealMissing as exc:
                left = sorted(set(exc.committed) - set(exc.missing))
                restarts.append({"attempt": attempt + 1, "cohort": alive, "committed": list(exc.committed),
                                 "missing_reveals": list(exc.missing), "restart_cohort": left})
                if attempt + 1 == MAX_ATTEMPTS:
                    raise ProtocolAbort(f"{exc} (after {MAX_ATTEMPTS} protocol rounds, each ended by a "
                                        "reveal-stage dropout)") from exc
                if len(left) < 3:
                    raise ProtocolAbort(f"{exc}; only {len(left)} clients left to restart with "
                                        "(need at least 3)") from exc
                alive = left
        params = self.round_params(len(alive), restart=bool(restarts), min_threshold=first_t)
        summed = sorted(result.summed)
        vec = codec.decode_sum(result.total, len(summed))
        entry = config.entry_bytes
        return Aggregate(vec, len(summed), layout, round_id, {
            "aggregator": self.name,
            "graph": config.graph, "neighbors": config.degree, "threshold": config.threshold, "bits": config.bits,
            "survivors": {k: sorted(v) for k, v in result.survivors.items()},
            "summed": summed, "dropped": sorted(set(cohort) - set(summed)), "refused": sorted(result.refused),
            "bytes": {s.stage: {"up": s.total_up, "down": s.total_down} for s in result.stages},
            "bytes_up_per_client": sum(s.total_up for s in result.stages) / max(len(cohort), 1),
            "masked_bytes_per_entry": entry,
            "seconds": {s.stage: {"client_median": s.client_median_seconds, "server": s.server_seconds} for s in result.stages},
            "protocol_seconds": time.perf_counter() - t0,
            "session_id": result.session_id.hex(),
            "restarts": restarts, "protocol_cohort": alive, "guarantee": params.to_dict(),
            "codec_gamma": {b.name: codec.gamma(b.name) for b in layout.blocks},
            "error_bound": codec.error_bound(len(summed)),
        })


__all__ = ["DEFAULT_HALTING_BITS", "DEFAULT_MAX_COLLUDERS", "LayoutCodec", "ProtocolAbort", "RingAggregator", "RingSettings",
           "SecAggAggregator", "SecAggSettings", "choose_round"]
