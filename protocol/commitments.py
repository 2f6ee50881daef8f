"""Commit-reveal of the clients' graph randomness and the Merkle trees that carry it.

Both sides run this code; which side runs which function is stated on each. The argument
for why it stops a server from choosing a SecAgg+ neighbourhood is in :mod:`protocol.graph`.

* :func:`commitment` -- C_u = SHA-256(tag || binding || u || r_u), a hiding (r_u holds
  :data:`REVEAL_BYTES` = 16 fresh bytes from the client's CSPRNG) and binding commitment.
* :class:`MerkleTree` -- a binary SHA-256 tree with domain-separated leaves (0x00) and
  nodes (0x01), so a leaf can never pass as a node; an odd node is carried up unchanged.
  :meth:`MerkleTree.path` gives the O(log n) sibling hashes of one leaf, and
  :func:`root_from_path` recomputes the root from a leaf, its index, the tree size and
  that path (the verifier's side).
* :func:`commit_leaf` / :func:`key_leaf` -- the leaf encodings of the commitment tree
  (id, C_u) and of the key tree (id, c_pk, s_pk, signature), both in committed-id order.
* :func:`round_root` -- the one 32-byte value a client checks before revealing.
* :func:`commitment_root` -- the commitment tree a client rebuilds from every reveal
  (client side). Pure in its input bytes and memoised on them: a simulation of n clients
  in one process computes it once per distinct input rather than n times (n^2 hashes).
  A memo hit compares the full input bytes, so no verification is skipped.
* :func:`graph_seed` -- seed = SHA-256(tag || committed ids || all reveals).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

REVEAL_BYTES = 16  # r_u: 128 bits of fresh randomness per client and round
HASH_BYTES = 32
_COMMIT_TAG = b"secure_fed/graph-commitment/v1"
_ROUND_ROOT_TAG = b"secure_fed/graph-round-root/v1"
_SEED_TAG = b"secure_fed/graph-seed/v2"
_LEAF, _NODE = b"\x00", b"\x01"


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def commitment(binding: bytes, u: int, reveal: bytes) -> bytes:
    """C_u for client ``u`` (both sides): ``binding`` is the round's config digest."""
    return hashlib.sha256(_COMMIT_TAG + binding + u32(u) + reveal).digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def commit_leaf(u: int, c: bytes) -> bytes:
    """Leaf data of client u in the commitment tree: id (4 bytes) || C_u."""
    return u32(u) + c


def key_leaf(u: int, c_pk: bytes, s_pk: bytes, signature: bytes) -> bytes:
    """Leaf data of client u in the key tree: id || c_pk || s_pk || signature (or empty)."""
    return u32(u) + c_pk + s_pk + signature


class MerkleTree:
    """A Merkle tree over leaf data, in the given order (server side builds it)."""

    __slots__ = ("levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        level = [leaf_hash(d) for d in leaves]
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
            self.levels.append(level)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.levels[0] else hashlib.sha256(_NODE).digest()

    def path(self, index: int) -> tuple[bytes, ...]:
        """Sibling hashes from leaf ``index`` up to the root (levels where the node is
        carried up unchanged contribute nothing)."""
        out = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                out.append(level[sib])
            index //= 2
        return tuple(out)


def path_length(index: int, size: int) -> int:
    """Number of sibling hashes on the path of leaf ``index`` in a tree of ``size`` leaves."""
    count = 0
    while size > 1:
        if index ^ 1 < size:
            count += 1
        index, size = index // 2, (size + 1) // 2
    return count


def root_from_path(data: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root implied by leaf ``data`` at ``index`` of a ``size``-leaf tree and ``path``
    (verifier side); None if the path has the wrong length for that position."""
    if not 0 <= index < size or len(path) != path_length(index, size):
        return None
    h, i = leaf_hash(data), 0
    while size > 1:
        if index ^ 1 < size:
            sib = path[i]
            i += 1
            h = _node(h, sib) if index % 2 == 0 else _node(sib, h)
        index, size = index // 2, (size + 1) // 2
    return h


def round_root(commit_root: bytes, key_root: bytes, size: int) -> bytes:
    """The value that fixes every committed entry: both tree roots and the leaf count."""
    return hashlib.sha256(_ROUND_ROOT_TAG + u32(size) + commit_root + key_root).digest()


_MEMO: OrderedDict[tuple[bytes, bytes, bytes], bytes] = OrderedDict()
_MEMO_KEPT = 8


def commitment_root(binding: bytes, ids: bytes, reveals: bytes) -> bytes:
    """Root of the commitment tree implied by the reveals (client side check).

    ``ids``: the committed ids as 4-byte big-endian values, increasing; ``reveals``: their
    r_u, :data:`REVEAL_BYTES` each, in the same order. Recomputes every C_u and the tree.
    Memoised on the exact input bytes (a pure function; a hit compares all of them).
    """
    key = (binding, ids, reveals)
    hit = _MEMO.get(key)
    if hit is not None:
        _MEMO.move_to_end(key)
        return hit
    n = len(ids) // 4
    leaves = []
    for i in range(n):
        u = ids[4 * i : 4 * i + 4]
        r = reveals[REVEAL_BYTES * i : REVEAL_BYTES * (i + 1)]
        leaves.append(u + hashlib.sha256(_COMMIT_TAG + binding + u + r).digest())
    root = MerkleTree(leaves).root
    _MEMO[key] = root
    while len(_MEMO) > _MEMO_KEPT:
        _MEMO.popitem(last=False)
    return root


def graph_seed(ids: bytes, reveals: bytes) -> bytes:
    """32-byte seed of the ring ordering: SHA-256 over the committed ids and every reveal
    (both as in :func:`commitment_root`). Nothing the server writes enters it: with the
    clients' randomness fixed, the graph is the same whatever the config says."""
    return hashlib.sha256(_SEED_TAG + len(ids).to_bytes(8, "big") + ids + reveals).digest()
