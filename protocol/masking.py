"""Mask seeds and mask application (clients add masks, the server removes them).

Self mask of u: PRG(HKDF(b_u, SELF_MASK, session || u)). Pairwise mask of u and v:
PRG(HKDF(X25519(s_sk_u, s_pk_v), PAIRWISE_MASK, session || min(u,v) || max(u,v))), added
by the smaller id and subtracted by the larger, so each pair cancels in the sum. PRG is
``crypto.prg.expand_into`` (AES-CTR keystream), applied in place without a mask copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crypto.agreement import Label, derive_key
from crypto.agreement import shared_secrets as _shared_secrets
from crypto.errors import CryptoError
from crypto.prg import add_mod, expand, expand_into, sub_mod
from protocol.errors import AuthenticationFailure
from protocol.session import pairwise_context, self_mask_context


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
    return [pairwise_seed_from_secret(sec, session, me, v)
            for sec, v in zip(secrets, peers, strict=True)]


def pairwise_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pair's mask (me < peer), -1 if it subtracts it."""
    return 1 if me < peer else -1


_DIRECT_BYTES = 1 << 20  # vectors up to 1 MiB: one mask-sized temporary is cheapest


def apply_mask(vec: np.ndarray, seed: bytes, sign: int) -> None:
    """Add (+1) or subtract (-1) PRG(seed) into ``vec`` in place, mod the word size.

    Up to 1 MiB the mask is expanded once and added (measured about 2x faster than
    ``expand_into`` at L = 10^5); larger vectors stream through ``expand_into`` so a
    full-size mask is never allocated.
    """
    if vec.nbytes > _DIRECT_BYTES:
        expand_into(seed, vec, sign)
        return
    mask = expand(seed, vec.size, vec.dtype.itemsize * 8)
    (add_mod if sign == 1 else sub_mod)(vec, mask, out=vec)
