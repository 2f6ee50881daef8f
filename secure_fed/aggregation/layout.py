"""The upload vector layout, the :class:`Aggregate` the server consumes, and the plaintext
aggregator.

Every client of a round flattens its named blocks into one float vector with the *same*
layout (a class a client lacks is a zero block), so the vector itself never reveals which
classes a client holds. The server side of the code only ever receives an
:class:`Aggregate`: the sum of the cohort's vectors plus the number of uploads summed. No
server API accepts a per-client list; aggregators are the only objects that see client
vectors, and the plaintext one forgets each vector as soon as it is added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from secure_fed.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Block:
    """One named block of the upload vector: ``shape`` entries starting at ``offset``.

    ``bound`` is the declared largest absolute value of one client's entry (used by
    fixed-point encoding to size the ring); ``None`` means not declared.
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    bound: float | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True, slots=True)
class VectorLayout:
    """An ordered set of blocks; identical for every client of a round."""

    blocks: tuple[Block, ...]

    @classmethod
    def build(cls, spec: Iterable[tuple[str, tuple[int, ...]] | tuple[str, tuple[int, ...], float]]) -> VectorLayout:
        blocks: list[Block] = []
        offset = 0
        seen: set[str] = set()
        for item in spec:
            name, shape = item[0], tuple(int(s) for s in item[1])
            bound = float(item[2]) if len(item) > 2 else None
            if name in seen:
                raise ConfigError(f"duplicate block name {name!r} in vector layout")
            if any(s < 0 for s in shape):
                raise ConfigError(f"block {name!r} has a negative dimension: {shape}")
            seen.add(name)
            blk = Block(name, shape, offset, bound)
            blocks.append(blk)
            offset += blk.size
        return cls(tuple(blocks))

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r} in layout (have {', '.join(self.names())})")

    def flatten(self, values: Mapping[str, np.ndarray | float]) -> np.ndarray:
        """Client side: the named blocks as one float64 vector; missing blocks are zero."""
        unknown = set(values) - set(self.names())
        if unknown:
            raise ConfigError(f"values for blocks not in the layout: {sorted(unknown)}")
        out = np.zeros(self.size, dtype=np.float64)
        for b in self.blocks:
            if b.name not in values:
                continue
            arr = np.asarray(values[b.name], dtype=np.float64)
            if arr.shape != b.shape:
                raise ConfigError(f"block {b.name!r}: expected shape {b.shape}, got {arr.shape}")
            out[b.offset : b.offset + b.size] = arr.reshape(-1)
        return out

    def view(self, vector: np.ndarray, name: str) -> np.ndarray:
        """Block ``name`` of ``vector`` reshaped to its declared shape (a view, not a copy)."""
        b = self.block(name)
        return vector[b.offset : b.offset + b.size].reshape(b.shape)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"name": b.name, "shape": list(b.shape), "offset": b.offset, "size": b.size, "bound": b.bound}
            for b in self.blocks
        ]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What the server receives: the sum of ``count`` uploads laid out by ``layout``.

    ``vector`` is made read-only on construction so nothing downstream edits the sum.
    ``meta`` carries protocol metadata the server sees anyway (survivors, bytes, timings).
    """

    vector: np.ndarray
    count: int
    layout: VectorLayout
    round_id: int
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vector.ndim != 1 or self.vector.size != self.layout.size:
            raise ConfigError(
                f"aggregate vector has {self.vector.size} entries, layout needs {self.layout.size}"
            )
        if self.count < 0:
            raise ConfigError("aggregate count must be >= 0")
        self.vector.setflags(write=False)

    def block(self, name: str) -> np.ndarray:
        return self.layout.view(self.vector, name)

    def digest(self) -> str:
        """SHA-256 (hex) of the summed vector's float64 little-endian bytes."""
        return hashlib.sha256(np.ascontiguousarray(self.vector, dtype="<f8").tobytes()).hexdigest()


ClientWork = Callable[[], np.ndarray]
"""A client's round: runs on the client and returns its flattened upload vector."""


class Aggregator(Protocol):
    """Runs the cohort's client work and returns only the sum (the server's one input)."""

    name: str

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        ...


class PlaintextAggregator:
    """Sums client vectors in the clear (a trusted aggregator: the baseline without SecAgg).

    Each vector is added to a running sum and dropped at once, so even this aggregator never
    hands the server (or keeps) an individual upload.
    """

    name = "plaintext"

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        total = np.zeros(layout.size, dtype=np.float64)
        for cid in sorted(work):
            vec = work[cid]()
            if vec.shape != (layout.size,):
                raise ConfigError(
                    f"client {cid} produced a vector of shape {vec.shape}, layout needs ({layout.size},)"
                )
            total += vec
        return Aggregate(
            total,
            len(work),
            layout,
            round_id,
            {"aggregator": self.name, "survivors": sorted(work), "summed": sorted(work),
             "bytes_up_per_client": 8 * layout.size},
        )
