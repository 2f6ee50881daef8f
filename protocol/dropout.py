"""Dropout schedules for simulation: which clients go silent before which stage.

A client listed at stage s sends nothing from stage s on (it never sends that stage's
message). Stages in order: advertise (keys and graph commitment), reveal (the committed
graph randomness: a client silent here aborts the round, see :mod:`protocol.graph`),
graph (confirming the graph seed), share (key shares), masked (masked input),
consistency (survivor-set confirmations; authenticated mode only), unmask
(unmasking shares). Random schedules draw from a seeded KeystreamRNG, never numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crypto.errors import ConfigError
from crypto.rng import KeystreamRNG

STAGES: tuple[str, ...] = ("advertise", "reveal", "graph", "share", "masked", "consistency",
                          "unmask")


@dataclass(frozen=True, slots=True)
class DropoutSchedule:
    """Stage name -> ids that drop just before sending that stage's message."""

    drops: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.drops) - set(STAGES)
        if unknown:
            raise ConfigError(f"unknown dropout stages {sorted(unknown)}; use {STAGES}")
        object.__setattr__(self, "drops", {s: frozenset(v) for s, v in self.drops.items()})

    @classmethod
    def none(cls) -> DropoutSchedule:
        return cls({})

    @classmethod
    def at(cls, stage: str, ids: Iterable[int]) -> DropoutSchedule:
        """Every id in ``ids`` drops just before ``stage``."""
        return cls({stage: frozenset(ids)})

    @classmethod
    def random(cls, cohort: Sequence[int], rate: float, stages: Sequence[str],
               rng: KeystreamRNG) -> DropoutSchedule:
        """Each client drops with probability ``rate``, at a stage drawn uniformly from
        ``stages``; draws come from ``rng`` (seeded in simulation)."""
        if not 0.0 <= rate <= 1.0 or not stages:
            raise ConfigError("dropout rate must be in [0, 1] and stages non-empty")
        gone = rng.bernoulli(rate, len(cohort))
        where = rng.integers(0, len(stages), len(cohort))
        drops: dict[str, set[int]] = {s: set() for s in stages}
        for cid, g, w in zip(cohort, gone, where, strict=True):
            if g:
                drops[stages[int(w)]].add(cid)
        return cls({s: frozenset(v) for s, v in drops.items()})

    def dropped_by(self, stage: str) -> frozenset[int]:
        """Ids silent at ``stage``: those scheduled at it or at any earlier stage."""
        upto = STAGES[: STAGES.index(stage) + 1]
        return frozenset().union(*(self.drops.get(s, frozenset()) for s in upto))

    def all_dropped(self) -> frozenset[int]:
        return self.dropped_by(STAGES[-1])
