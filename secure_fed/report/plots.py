"""The report's figures: matplotlib PNGs (no version stamp: stable bytes) with their alt text."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from secure_fed.report.load import (
    RunData,
    _dict,
    _finite,
    _list,
    accountants,
    dp_enabled,
    epsilons,
    stage_order,
    summed,
    survivors,
)
from secure_fed.report.text import esc, fmt_bytes


@dataclass(frozen=True)
class Plot:
    """One embedded figure: PNG bytes and the alt text that describes it."""

    title: str
    png: bytes
    alt: str

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return (f"<figure><img src='data:image/png;base64,{data}' alt='{esc(self.alt)}'>"
                f"<figcaption>{esc(self.title)}</figcaption></figure>")


def _figure(ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    return buf.getvalue()


def _series(rounds: Sequence[dict[str, Any]], value: Any) -> tuple[list[float], list[float]]:
    """(round, y) pairs where both are finite numbers; ``value`` maps a record to y."""
    xs: list[float] = []
    ys: list[float] = []
    for r in rounds:
        x, y = _finite(r.get("round")), _finite(value(r))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_epsilon(run: RunData) -> Plot | None:
    """Epsilon (max over clients) vs round, one line per accountant; None without epsilon."""
    accs = accountants(run.rounds)
    if not accs:
        return None
    fig, ax = _figure("epsilon (max over clients)")
    finals = []
    for i, acc in enumerate(accs):
        xs, ys = _series(run.rounds, lambda r, a=acc: epsilons(r).get(a))
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=3, label=acc)
        if ys:
            finals.append(f"{acc} {ys[-1]:.3g} after round {xs[-1]:.0f}")
    target = _finite(run.config.get("target_epsilon"))
    if target is not None:
        ax.axhline(target, color="0.3", linestyle="--", linewidth=1, label="target")
    ax.legend(loc="upper left")
    alt = (f"Line plot of epsilon, maximum over clients, versus round, one line per accountant "
           f"({', '.join(accs)}); final values: {'; '.join(finals) or 'none'}"
           + (f"; dashed line at the target epsilon {target:g}." if target is not None else "."))
    return Plot("Privacy spent: epsilon vs round", _png(fig), alt)


def plot_accuracy(run: RunData) -> Plot | None:
    """Test accuracy of the global model vs round; None if no round logged one."""
    xs, ys = _series(run.rounds, lambda r: r.get("accuracy"))
    if not xs:
        return None
    fig, ax = _figure("test accuracy")
    ax.plot(xs, ys, marker="o", markersize=3)
    alt = (f"Line plot of test accuracy versus round over {len(xs)} rounds: from {ys[0]:.3f} "
           f"after round {xs[0]:.0f} to {ys[-1]:.3f} after round {xs[-1]:.0f}, "
           f"best {max(ys):.3f}.")
    return Plot("Global model accuracy vs round", _png(fig), alt)


def plot_survivors(run: RunData) -> Plot | None:
    """Clients alive at each protocol stage vs round, with the cohort size for reference."""
    stages = stage_order({s for r in run.rounds for s in survivors(r)})
    if not stages:
        return None
    fig, ax = _figure("clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    xs, ys = _series(run.rounds, lambda r: len(_list(r.get("cohort"))) or None)
    ax.plot(xs, ys, color="0.4", linestyle="--", linewidth=1, label="cohort")
    for i, st in enumerate(stages):
        sx, sy = _series(run.rounds, lambda r, s=st: len(survivors(r)[s])
                         if s in survivors(r) else None)
        ax.plot(sx, sy, marker=MARKERS[i % len(MARKERS)], markersize=3, label=st)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    low = min((n for r in run.rounds if (n := summed(r)) is not None), default=None)
    alt = (f"Line plot of surviving clients per protocol stage ({', '.join(stages)}) versus "
           f"round, with the cohort size dashed; fewest clients summed in a round: {low}.")
    return Plot("Survivors per stage vs round", _png(fig), alt)


def plot_bytes(run: RunData) -> Plot | None:
    """Bytes uploaded per client vs round (KiB); None if the log has none."""
    xs, ys = _series(run.rounds, lambda r: r.get("bytes_up_per_client"))
    if not xs:
        return None
    fig, ax = _figure("upload per client (KiB)")
    ax.plot(xs, [y / 1024 for y in ys], marker="o", markersize=3)
    ax.set_ylim(bottom=0)
    alt = (f"Line plot of bytes uploaded per client versus round: between "
           f"{fmt_bytes(min(ys))} and {fmt_bytes(max(ys))} per round.")
    return Plot("Upload per client vs round", _png(fig), alt)


def _drawn(draw: Callable[[RunData], Plot | None], run: RunData,
           why: str) -> tuple[str, Plot | None]:
    """``draw(run)`` with ``why`` for a missing plot; values matplotlib cannot scale
    (e.g. +-1e308 in one axis) leave a sentence instead of failing the whole report."""
    try:
        return why, draw(run)
    except (ValueError, ArithmeticError) as exc:
        return f"this plot could not be drawn from the logged values ({exc})", None


def plots(run: RunData) -> list[tuple[str, Plot | None]]:
    """Every plot with the sentence shown in its place when it cannot be drawn."""
    none = "no rounds recorded" if not run.rounds else None
    no_eps = ("no differential privacy: no epsilon to plot" if not dp_enabled(run)
              else "no epsilon recorded")
    return [
        _drawn(plot_epsilon, run, none or no_eps),
        _drawn(plot_accuracy, run, none or "no accuracy recorded"),
        _drawn(plot_survivors, run, none or "no survivors recorded"),
        _drawn(plot_bytes, run, none or "no byte counts recorded"),
    ]





def plot_audit(spec: dict[str, Any]) -> Plot | None:
    """One audit plot from its spec (title, axis labels and scales, series of x/y lists)."""
    fig = Figure(figsize=(7.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel(str(spec.get("xlabel", "")))
    ax.set_ylabel(str(spec.get("ylabel", "")))
    ax.grid(True, alpha=0.3)
    drawn = []
    for i, s in enumerate(_list(spec.get("series"))):
        s = _dict(s)
        pts = [(x, y) for a, b in zip(_list(s.get("x")), _list(s.get("y")), strict=False)
               if (x := _finite(a)) is not None and (y := _finite(b)) is not None]
        if not pts:
            continue
        label = str(s.get("label", f"series {i + 1}"))
        marker = MARKERS[i % len(MARKERS)] if len(pts) <= 40 else None  # dense curves: no markers
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, markersize=3,
                linewidth=1.2, label=label)
        drawn.append(label)
    if not drawn:
        return None
    for axis, key in ((ax.set_xscale, "xscale"), (ax.set_yscale, "yscale")):
        if spec.get(key) == "log":
            axis("log")
    if len(drawn) > 1:
        ax.legend(loc="best", fontsize="small")
    title = str(spec.get("title", "audit plot"))
    alt = (f"Line plot of {spec.get('ylabel', 'y')} versus {spec.get('xlabel', 'x')}, "
           f"{len(drawn)} series: {'; '.join(drawn)}.")
    return Plot(title, _png(fig), alt)
