"""Long-term Ed25519 signing identities of clients (client side, kept across rounds).

A client's identity key signs its key advertisements in authenticated rounds; the server
and the other clients know only its public key. Keys come from the OS CSPRNG; only tests
and reproducible runs derive them from a seed, and then client u's key depends on
(seed, u) alone, so a client can derive it wherever it runs (this process, an executor's
worker). :class:`IdentityStore` is where a host keeps the private keys of its clients.
"""

from __future__ import annotations

from collections.abc import Iterable

from crypto.rng import KeystreamRNG, random_bytes
from crypto.signing import SigningKeyPair, generate_signing_keypair

IDENTITY_LABEL = "identities"


def make_identities(ids: Iterable[int], rng: KeystreamRNG | None = None
                    ) -> dict[int, SigningKeyPair]:
    """Long-term Ed25519 identities (client side, kept across rounds); seeded only in tests.

    With a seeded ``rng``, client u's key comes from ``rng.spawn(f"identity/{u}")``: it
    depends on u alone, so a client can derive it wherever it runs.
    """
    if rng is None:
        return {u: generate_signing_keypair(random_bytes(32)) for u in ids}
    return {u: generate_signing_keypair(rng.spawn(f"identity/{u}").bytes(32)) for u in ids}


def client_identity(cid: int, seed: int | None = None) -> SigningKeyPair:
    """Client ``cid``'s long-term key: fresh from the OS CSPRNG (``seed`` None, hardened
    runs) or derived from (``seed``, cid) (reproducible runs and tests)."""
    rng = None if seed is None else KeystreamRNG.from_seed(seed, IDENTITY_LABEL)
    return make_identities((cid,), rng)[cid]


class IdentityStore:
    """The private identity keys of the clients a host runs (client side).

    Each key is created on first use (:func:`client_identity`) and kept for the run, so a
    client signs every round with the same identity the server learnt once.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._keys: dict[int, SigningKeyPair] = {}

    def get(self, cid: int) -> SigningKeyPair:
        if cid not in self._keys:
            self._keys[cid] = client_identity(cid, self.seed)
        return self._keys[cid]

    def for_ids(self, ids: Iterable[int]) -> dict[int, SigningKeyPair]:
        return {u: self.get(u) for u in ids}

    def public(self, ids: Iterable[int]) -> dict[int, bytes]:
        """The public keys of ``ids`` (what the server and the other clients may hold)."""
        return {u: self.get(u).public for u in ids}


__all__ = ["IdentityStore", "client_identity", "make_identities"]
