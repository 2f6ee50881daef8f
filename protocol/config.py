"""Public parameters of one secure-aggregation round (both sides hold the same copy).

Everything here is public: the cohort, the vector length, the ring Z_{2^bits}, the share
threshold t and the masking graph. :meth:`ProtocolConfig.digest` hashes all of it, so the
session id (and through it every key, seed and signature) is bound to the exact config.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from crypto.codec import FixedPointCodec
from crypto.errors import ConfigError, EncodingOverflow
from crypto.rng import random_bytes

PROTOCOL_VERSION = 2
MAX_CLIENT_ID = (1 << 32) - 2  # share index is id + 1, which must fit in 4 bytes
MAX_LENGTH = 1 << 28  # entries per vector
GraphKind = Literal["complete", "harary"]
GRAPH_KINDS: tuple[str, ...] = ("complete", "harary")
NONCE_BYTES = 16  # a fresh round nonce: 128 bits from the OS CSPRNG
MAX_NONCE_BYTES = 64


def fresh_nonce() -> bytes:
    """A fresh 16-byte round nonce from the OS CSPRNG (whoever configures a round)."""
    return random_bytes(NONCE_BYTES)


def _check_cohort(cohort: tuple[int, ...]) -> None:
    if len(cohort) < 2:
        raise ConfigError(f"the cohort needs at least 2 clients, got {len(cohort)}")
    if any(not isinstance(c, int) or not 0 <= c <= MAX_CLIENT_ID for c in cohort):
        raise ConfigError(f"client ids must be integers in 0..{MAX_CLIENT_ID}")
    if list(cohort) != sorted(set(cohort)):
        raise ConfigError("cohort ids must be unique and sorted ascending")


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """One round's public parameters.

    ``cohort``: sorted unique client ids. ``length``: entries per vector. ``bits``: the ring
    is Z_{2^bits} (1..64; words are uint32 for bits <= 32, else uint64). ``threshold``: t,
    the number of shares that reconstruct a secret; every client's secrets are shared among
    its k graph neighbours plus itself (k + 1 holders), and ``2t > k + 1`` is required so
    that no two disjoint groups of honest holders can each reveal a different secret of the
    same client. ``graph``: ``complete`` (SecAgg, k = n - 1) or ``harary`` (SecAgg+, k =
    ``neighbors``). ``authenticated``: Ed25519-signed keys and a consistency round.
    """

    round_id: int
    cohort: tuple[int, ...]
    length: int
    bits: int
    threshold: int
    graph: str = "complete"
    neighbors: int | None = None
    authenticated: bool = True
    public_seed: bytes = b""
    nonce: bytes = b""
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cohort", tuple(self.cohort))
        _check_cohort(self.cohort)
        if not 0 <= self.round_id < 1 << 64:
            raise ConfigError(f"round_id must be in 0..2^64-1, got {self.round_id}")
        if not 1 <= self.length <= MAX_LENGTH:
            raise ConfigError(f"length must be in 1..{MAX_LENGTH}, got {self.length}")
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 64:
            raise ConfigError(f"bits must be an integer in 1..64, got {self.bits!r}")
        if self.graph not in GRAPH_KINDS:
            raise ConfigError(f"graph must be one of {GRAPH_KINDS}, got {self.graph!r}")
        if not isinstance(self.nonce, bytes) or (
                self.nonce and not NONCE_BYTES <= len(self.nonce) <= MAX_NONCE_BYTES):
            raise ConfigError(f"nonce must be empty or {NONCE_BYTES}..{MAX_NONCE_BYTES} bytes "
                              "(use protocol.config.fresh_nonce())")
        self._check_degree()
        k = self.degree
        if not (k + 1) / 2 < self.threshold <= k + 1:
            raise ConfigError(
                f"threshold t={self.threshold} must satisfy (k+1)/2 < t <= k+1 with k={k} "
                f"neighbours: choose t in {(k + 1) // 2 + 1}..{k + 1} (see protocol.params)"
            )
        object.__setattr__(self, "_digest", self._compute_digest())

    def _check_degree(self) -> None:
        n = len(self.cohort)
        if self.graph == "complete":
            if self.neighbors not in (None, n - 1):
                raise ConfigError(f"the complete graph has k = n - 1 = {n - 1} neighbours")
            return
        k = self.neighbors
        if k is None or not 1 <= k <= n - 1:
            raise ConfigError(f"harary graph: neighbors must be in 1..{n - 1}, got {k}")
        if k % 2 == 1 and n % 2 == 1:
            raise ConfigError(f"harary graph: odd k={k} needs an even cohort; use k={k + 1}")

    @property
    def n(self) -> int:
        """Cohort size (clients)."""
        return len(self.cohort)

    @property
    def degree(self) -> int:
        """k: graph neighbours per client (n - 1 for the complete graph)."""
        return self.n - 1 if self.graph == "complete" else int(self.neighbors or 0)

    @property
    def entry_bytes(self) -> int:
        """Bytes per masked-vector entry on the wire: ceil(bits / 8)."""
        return (self.bits + 7) // 8

    def digest(self) -> bytes:
        """SHA-256 over every public parameter (32 bytes; computed once)."""
        return self._digest

    def _compute_digest(self) -> bytes:
        h = hashlib.sha256(b"secure_fed/protocol-config/v1")
        for value in (PROTOCOL_VERSION, self.round_id, self.length, self.bits, self.threshold,
                      self.degree, int(self.authenticated), self.n):
            h.update(int(value).to_bytes(8, "big"))
        h.update(self.graph.encode().ljust(16, b"\0"))
        h.update(len(self.public_seed).to_bytes(4, "big") + self.public_seed)
        h.update(b"".join(c.to_bytes(4, "big") for c in self.cohort))
        if self.nonce:  # configs without a nonce keep the digest they always had
            h.update(b"nonce" + len(self.nonce).to_bytes(4, "big") + self.nonce)
        return h.digest()

    def check_codec(self, codec: FixedPointCodec) -> None:
        """Refuse a codec whose cohort sum could wrap Z_{2^bits}.

        The check counts *clients* (the n inputs that are summed), not shares or graph
        edges: masks cancel exactly, so only the n encoded inputs add up.
        """
        if codec.bits != self.bits:
            raise ConfigError(f"codec bits {codec.bits} != protocol bits {self.bits}")
        try:
            codec.check_cohort(self.n)
        except EncodingOverflow as exc:
            raise EncodingOverflow(f"{exc} (cohort of {self.n} clients)") from None
