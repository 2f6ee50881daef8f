"""Typed records of a run: what each round adds to ``Trainer.history`` (and to
``metrics.json``'s ``rounds``) and why a run stopped early.

They are ``TypedDict``s: the records stay plain JSON objects on disk and in memory (every
reader of metrics.json and the checkpoint keeps working), and mypy checks every key the
trainer writes or reads.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class RoundRecord(TypedDict):
    """One round of the run. An aborted round (too few survivors: nothing revealed) has
    ``aborted`` (the reason), ``survivors`` 0, and repeats the last accuracy and epsilon."""

    round: int
    accuracy: float | None  # test accuracy of the global model after the round, in [0, 1]
    loss: float | None
    train_loss: float | None  # clients' mean last-epoch batch loss (local diagnostic)
    epsilon: float | None  # spent so far by the run's accountant, max over clients
    survivors: int  # clients whose uploads are in the sum
    cohort: int
    bytes_up_per_client: int | None
    seconds: float
    aborted: NotRequired[str]
    personalized_accuracy: NotRequired[float]  # final round only


class StopRecord(TypedDict):
    """Why the run stopped before ``round``: the target epsilon would have been crossed."""

    round: int
    reason: str
    epsilon: dict[str, Any] | None  # spent per accountant when it stopped


__all__ = ["RoundRecord", "StopRecord"]
