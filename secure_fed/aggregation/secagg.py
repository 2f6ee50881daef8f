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

import math
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
from protocol.dropout import STAGES
from protocol.errors import ProtocolAbort
from protocol.params import choose_graph_params
from protocol.runner import make_identities, run_round
from protocol.simulator import default_threshold
from secure_fed.aggregation.layout import Aggregate, ClientWork, VectorLayout
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


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg / SecAgg+ parameters (``neighbors``/``threshold`` None: chosen per cohort)."""

    graph: str = "harary"  # "complete" = SecAgg, "harary" = SecAgg+
    neighbors: int | None = None
    threshold: int | None = None
    authenticated: bool = True
    dropout: float = 0.0
    dropout_seed: int = 0
    server_workers: int = 1  # processes for the server's unmasking (1: this one only)


class SecAggAggregator(_RingBase):
    """SecAgg (complete graph) or SecAgg+ (Harary graph): the server learns only the sum.

    ``remote``: clients hosted by an executor (:mod:`secure_fed.executor`), which then run
    the client side of the protocol where they live; None runs them in this process.
    """

    def __init__(self, ring: RingSettings, secagg: SecAggSettings, remote: Any = None) -> None:
        super().__init__(ring)
        self.secagg = secagg
        self.name = "secagg" if secagg.graph == "complete" else "secagg+"
        self.remote = remote
        self._identities: dict[int, SigningKeyPair] = {}

    def protocol_config(self, round_id: int, cohort: list[int], length: int) -> ProtocolConfig:
        s = self.secagg
        n = len(cohort)
        if n < 3:
            raise ConfigError(f"--cohort: secure aggregation needs at least 3 clients per round, got {n}")
        graph, k, t = s.graph, s.neighbors, s.threshold
        if graph == "complete":
            k = n - 1
        elif k is None:
            try:
                params = choose_graph_params(n, dropout=min(max(s.dropout, 0.05), 0.5))
                graph, k = params.graph, params.k
                t = t if t is not None else params.t
            except ConfigError:
                # Cohorts too small for the helper's targets: a degree of ~2 log2(n), the
                # usual SecAgg+ choice, made valid for the Harary construction.
                k = min(n - 1, 2 * math.ceil(math.log2(n)))
                if k % 2 == 1 and n % 2 == 1:
                    k -= 1
                graph = "complete" if k == n - 1 else "harary"
        if t is None:
            t = default_threshold(k)
        return ProtocolConfig(round_id, tuple(cohort), length, self.settings.bits, t, graph,
                              None if graph == "complete" else k, s.authenticated)

    def client_identity(self, cid: int) -> SigningKeyPair:
        """Client side: client ``cid``'s long-term key (seeded by (seed, cid) when reproducible)."""
        rng = None if self.settings.hardened else KeystreamRNG.from_seed(self.settings.seed, "identities")
        return make_identities((cid,), rng)[cid]

    def protocol_rng(self, round_id: int, cid: int) -> KeystreamRNG | None:
        """Client side: the protocol randomness of ``cid`` in a round (None: the OS CSPRNG)."""
        if self.settings.hardened:
            return None
        return KeystreamRNG.from_seed(self.settings.seed, f"protocol/{round_id}").spawn(f"client/{cid}")

    def _identities_for(self, cohort: list[int]) -> dict[int, SigningKeyPair]:
        for c in cohort:
            if c not in self._identities:
                self._identities[c] = self.client_identity(c)
        return {c: self._identities[c] for c in cohort}

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        cohort = sorted(work)
        config = self.protocol_config(round_id, cohort, layout.size)
        codec = LayoutCodec.for_cohort(layout, self.settings.bits, len(cohort), self.settings.noise_std)
        drops = DropoutSchedule.random(
            cohort, self.secagg.dropout, STAGES if self.secagg.authenticated else tuple(s for s in STAGES if s != "consistency"),
            KeystreamRNG.from_seed(self.secagg.dropout_seed, f"dropout/{round_id}"),
        )
        rng = None if self.settings.hardened else KeystreamRNG.from_seed(self.settings.seed, f"protocol/{round_id}")
        t0 = time.perf_counter()
        if self.remote is not None:  # clients run where the executor hosts them
            pool, identity_keys = self.remote.open_pool(config, codec)
            result = run_round(pool, config, drops, identity_keys, server_workers=self.secagg.server_workers)
        else:
            result = run_secure_round(
                self.client_encoder(round_id, codec, work), config, drops,
                identities=self._identities_for(cohort) if config.authenticated else None, rng=rng,
                server_workers=self.secagg.server_workers,
            )
        summed = sorted(result.summed)
        vec = codec.decode_sum(result.total, len(summed))
        entry = config.entry_bytes
        return Aggregate(vec, len(summed), layout, round_id, {
            "aggregator": self.name,
            "graph": config.graph, "neighbors": config.degree, "threshold": config.threshold, "bits": config.bits,
            "survivors": {k: sorted(v) for k, v in result.survivors.items()},
            "summed": summed, "dropped": sorted(result.dropped), "refused": sorted(result.refused),
            "bytes": {s.stage: {"up": s.total_up, "down": s.total_down} for s in result.stages},
            "bytes_up_per_client": sum(s.total_up for s in result.stages) / max(len(cohort), 1),
            "masked_bytes_per_entry": entry,
            "seconds": {s.stage: {"client_median": s.client_median_seconds, "server": s.server_seconds} for s in result.stages},
            "protocol_seconds": time.perf_counter() - t0,
            "session_id": result.session_id.hex(),
            "codec_gamma": {b.name: codec.gamma(b.name) for b in layout.blocks},
            "error_bound": codec.error_bound(len(summed)),
        })


__all__ = ["LayoutCodec", "ProtocolAbort", "RingAggregator", "RingSettings", "SecAggAggregator", "SecAggSettings"]
