"""Mask seeds and mask application (clients add masks, the server removes them).

Self mask of u: PRG(HKDF(b_u, SELF_MASK, session || u)). Pairwise mask of u and v:
PRG(HKDF(X25519(s_sk_u, s_pk_v), PAIRWISE_MASK, session || min(u,v) || max(u,v))), added
by the smaller id and subtracted by the larger, so each pair cancels in the sum. PRG is
``crypto.prg.expand_sum_into`` (AES-CTR keystream), applied in place without a mask copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from crypto.agreement import KeyMismatch, Label, PublicKeyCache, derive_key, derive_keys
from crypto.agreement import shared_secrets as _shared_secrets
from crypto.errors import CryptoError
from crypto.prg import expand_sum_into
from protocol.errors import AuthenticationFailure, ProtocolAbort
from protocol.session import pairwise_context, pairwise_contexts, self_mask_context


def self_mask_seed(b_seed: bytes, session: bytes, owner: int) -> bytes:
    """32-byte PRG seed of ``owner``'s self mask."""
    return derive_key(b_seed, Label.SELF_MASK, self_mask_context(session, owner))


def shared_secrets(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """:func:`crypto.agreement.shared_secrets`, with a failure raised as
    :class:`AuthenticationFailure` (a ProtocolAbort): a peer key that does not agree aborts."""
    try:
        return _shared_secrets(private, peer_publics)
    except CryptoError:
        raise AuthenticationFailure("key agreement with a peer key failed") from None


def pairwise_seed_from_secret(secret: bytes, session: bytes, me: int, peer: int) -> bytes:
    """32-byte PRG seed of the pair (me, peer) from their raw X25519 secret (symmetric)."""
    return derive_key(secret, Label.PAIRWISE_MASK, pairwise_context(session, me, peer))


def pairwise_seeds(s_sk: bytes, peer_s_pks: Sequence[bytes], session: bytes, me: int,
                   peers: Sequence[int]) -> list[bytes]:
    """Pairwise PRG seeds of ``me`` with each of ``peers`` (either side derives the same)."""
    secrets = shared_secrets(s_sk, peer_s_pks)
    return derive_keys(secrets, Label.PAIRWISE_MASK, pairwise_contexts(session, me, peers))


def pairwise_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pair's mask (me < peer), -1 if it subtracts it."""
    return 1 if me < peer else -1


def apply_mask(vec: np.ndarray, seed: bytes, sign: int) -> None:
    """Add (+1) or subtract (-1) PRG(seed) into ``vec`` in place, mod the word size."""
    expand_sum_into((seed,), vec, sign)


def apply_masks(vec: np.ndarray, plus: Sequence[bytes], minus: Sequence[bytes]) -> None:
    """``vec += sum PRG(plus) - sum PRG(minus)`` in place, mod the word size (client side:
    its self mask and its pairwise masks, through one reused keystream buffer, so no
    mask-sized array is allocated; :func:`crypto.prg.expand_sum_into`)."""
    expand_sum_into(plus, vec, 1)
    expand_sum_into(minus, vec, -1)


# -- server side: removing the masks of a whole round ---------------------------------------

PairwiseJob: TypeAlias = tuple[int, bytes, bytes, tuple[int, ...], tuple[bytes, ...]]
"""(d, s_sk_d, s_pk_d, survivors v that masked with d, their s_pk_v): the pairwise masks
of one dropped client d. Plain tuples, so a job pickles cheaply to a worker process."""


def self_mask_seeds(b_seeds: Sequence[bytes], session: bytes, owners: Sequence[int]
                    ) -> list[bytes]:
    """:func:`self_mask_seed` of each owner, derived in one batch."""
    return derive_keys(b_seeds, Label.SELF_MASK, [self_mask_context(session, u) for u in owners])


def add_pairwise_masks(out: np.ndarray, jobs: Sequence[PairwiseJob], session: bytes,
                       sign: int) -> None:
    """``out += sign * (the pairwise masks the survivors added for the pairs in jobs)``.

    Survivor v added ``pairwise_sign(v, d) * PRG(s_vd)`` for each dropped neighbour d; the
    server regenerates s_vd from d's reconstructed s_sk (after checking it against d's
    advertised s_pk) and calls this with ``sign=-1`` on the running sum. One private-key
    parse per d, one public-key parse per survivor (cached across jobs), batched HKDF and
    batched AES-CTR rows (:func:`crypto.prg.expand_sum_into`). Raises ProtocolAbort if a
    reconstructed key does not match its advertisement, AuthenticationFailure if a peer key
    does not agree. Mask seeds live only inside this call.
    """
    cache = PublicKeyCache()
    plus: list[bytes] = []  # seeds whose masks the survivors added (v < d)
    minus: list[bytes] = []  # ... and subtracted (v > d)
    for d, s_sk, s_pk, peers, peer_pks in jobs:
        try:
            secrets = _shared_secrets(s_sk, peer_pks, expected_public=s_pk, cache=cache)
        except KeyMismatch:
            raise ProtocolAbort("a reconstructed key does not match its advertisement") from None
        except CryptoError:
            raise AuthenticationFailure("key agreement with a peer key failed") from None
        seeds = derive_keys(secrets, Label.PAIRWISE_MASK, pairwise_contexts(session, d, peers))
        for v, seed in zip(peers, seeds, strict=True):
            (plus if v < d else minus).append(seed)
        del secrets, seeds
    expand_sum_into(plus, out, sign)
    expand_sum_into(minus, out, -sign)
    plus.clear()
    minus.clear()


def pairwise_mask_total(jobs: Sequence[PairwiseJob], session: bytes, length: int,
                        dtype: str) -> np.ndarray:
    """The pairwise masks the survivors added for ``jobs``, as a new vector (the part of
    the server's work a worker process runs; the server subtracts the result)."""
    out = np.zeros(length, dtype=np.dtype(dtype))
    add_pairwise_masks(out, jobs, session, 1)
    return out
