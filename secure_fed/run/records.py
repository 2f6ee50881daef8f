"""Typed records of a run: what each round adds to ``Trainer.history`` (and to
``metrics.json``'s ``rounds``) and why a run stopped early.

They are ``TypedDict``s: the records stay plain JSON objects on disk and in memory (every
reader of metrics.json and the checkpoint keeps working), and mypy checks every key the
trainer writes or reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict

from protocol.params import RoundParams
from secure_fed.fl.fedhpro import HpRound


class ServerStep(TypedDict):
    """What a prototype method's server did with the round's sum: its per-class step ran on
    ``active`` of ``num_classes`` classes (the rest kept their state: absent, or below the
    gate under DP); GFPL adds whether its calibration was due and whether it ran."""

    label: str
    active: int
    num_classes: int
    calibration_due: NotRequired[bool]
    calibrated: NotRequired[bool]


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
    restarts: NotRequired[int]  # protocol rounds restarted after a reveal-stage dropout
    personalized_accuracy: NotRequired[float]  # final round only
    hp: NotRequired[HpRound]  # FedHPro: the round's hyper-prototype matching
    server_step: NotRequired[ServerStep]  # prototype methods: the server's per-class step


class StopRecord(TypedDict):
    """Why the run stopped before ``round``: the target epsilon would have been crossed."""

    round: int
    reason: str
    epsilon: dict[str, Any] | None  # spent per accountant when it stopped


def guarantee_line(params: RoundParams | None) -> str | None:
    """The secure aggregation guarantee a run delivers, in one line (None without SecAgg);
    printed at the start of ``train``."""
    if params is None:
        return None
    line = f"secure aggregation: {params.describe()}"
    if not params.authenticated:
        line += ("; --no-authenticated: passive server only (an active server can "
                 "impersonate clients and recover inputs)")
    return line


def server_step(label: str, stats: Mapping[str, float], num_classes: int) -> ServerStep:
    """The round's :class:`ServerStep` from the statistics ``FedServer.apply`` returned."""
    step: ServerStep = {"label": label, "active": int(stats["active_classes"]), "num_classes": num_classes}
    if "calibration_due" in stats:
        step["calibration_due"] = bool(stats["calibration_due"])
        step["calibrated"] = bool(stats.get("calibrated", 0.0))
    return step


def step_totals(steps: Sequence[Mapping[str, Any]]) -> tuple[int, int, int | None, int | None]:
    """Over a run's :class:`ServerStep` records: (class-rounds read, class-rounds in all,
    calibrations run, calibrations due); the last two None for a method without calibration."""
    def count(v: Any) -> int:  # records read back from an audit log: anything else counts 0
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else 0

    read = sum(count(st.get("active")) for st in steps)
    slots = sum(count(st.get("num_classes")) for st in steps)
    if not any("calibration_due" in st for st in steps):
        return read, slots, None, None
    due = [st for st in steps if st.get("calibration_due")]
    return read, slots, sum(1 for st in due if st.get("calibrated")), len(due)


def round_line(rec: RoundRecord, rounds: int, secure: bool) -> str:
    """The console line of a round of a ``rounds``-round run (``secure``: under SecAgg, with
    the survivors)."""
    r = rec["round"]
    if rec.get("aborted"):
        return f"round {r:>3}/{rounds}  ABORTED ({rec['aborted']}): no update, nothing revealed"
    line = f"round {r:>3}/{rounds}  acc {rec['accuracy']:.4f}  loss {rec['loss']:.4f}"
    if rec.get("epsilon") is not None:
        line += f"  eps {rec['epsilon']:.3f}"
    if secure:
        line += f"  survivors {rec['survivors']}/{rec['cohort']}"
    if n := rec.get("restarts"):
        line += f"  restarted {'once' if n == 1 else f'{n} times'} after a reveal dropout"
    if (up := rec["bytes_up_per_client"]) is not None:
        line += f"  up {up / 1024:.1f} KiB/client"
    line += f"  {rec['seconds']:.2f}s"
    if "personalized_accuracy" in rec:
        line += f"  personalized {rec['personalized_accuracy']:.4f}"
    if "hp" in rec:
        line += f"  hp {len(rec['hp']['matched_classes'])}/{rec['hp']['num_classes']}"
    if (step := rec.get("server_step")) is not None:
        line += f"  {step['label']} {step['active']}/{step['num_classes']}"
        if step.get("calibrated"):
            line += "  calibrated"
        elif step.get("calibration_due"):
            line += "  calibration skipped (no class cleared the gate)"
    return line


__all__ = ["HpRound", "RoundRecord", "ServerStep", "server_step", "step_totals", "StopRecord", "guarantee_line", "round_line"]
