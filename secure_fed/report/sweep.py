"""Privacy-utility sweeps: a grid of training runs, each a normal run folder, and the table
and plot over them.

A grid maps :class:`~secure_fed.config.TrainConfig` fields to lists of values (plus fixed
``base`` values); every combination is one training run through the same
:class:`~secure_fed.run.trainer.Trainer` path as ``run_secure.py train``, in
``OUT/runs/<run-id>/`` with config.json, audit.jsonl, metrics.json, checkpoint.pt and
report.html. Run ids are deterministic (the swept values plus a hash of the whole
configuration), so running the same sweep again finds its runs: finished ones are skipped,
an interrupted one resumes after its last checkpointed round (or restarts cleanly when it
never checkpointed one). ``OUT/sweep.csv`` and ``OUT/sweep.html`` are rewritten atomically
after every finished run and at the end.

Runs execute in-process one after the other (``executor="local"``) or as Ray tasks, one
CPU each (``executor="ray"``). The driver alone writes the tables; each task writes only its
own run folder (on a cluster, ``OUT`` must be on a filesystem every node sees).

Units: accuracy is the global model's test accuracy in [0, 1]; epsilon is the privacy the
run actually spent (the run's accountant, maximum over clients) at the run's delta;
seconds are wall-clock seconds.
"""


from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fed.config import EXECUTORS, TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.report.grid import (
    CSV_NAME,
    EPSILON_KEYS,
    HTML_NAME,
    MARKER,
    RESULT_COLUMNS,
    RUNS_DIR,
    SEED_KEY,
    STATUSES,
    Grid,
    RunSpec,
    expand,
    format_value,
    run_identity,
)
from secure_fed.run.rundir import JOURNAL, atomic_write_bytes, write_json


# -- one run (in the sweep's process or in a Ray task) ----------------------------------------
def _same_config(run_dir: Path, cfg: TrainConfig) -> bool:
    try:
        recorded = json.loads((run_dir / "config.json").read_text())
        return run_identity(TrainConfig.from_dict(recorded)) == run_identity(cfg)
    except (OSError, ValueError, TypeError):
        return False


def finished_row(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The stored result of a finished run of ``cfg`` in ``run_dir``, or None."""
    try:
        marker = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not _same_config(run_dir, cfg):
        return None
    row = marker.get("result")
    return row if isinstance(row, dict) and row.get("status") in ("complete", "budget-stopped") else None


def _result(cfg: TrainConfig, metrics: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The result columns of a finished run, from its metrics (what metrics.json holds)."""
    history = [r for r in metrics.get("rounds") or [] if isinstance(r, dict)]
    done = [r for r in history if not r.get("aborted") and r.get("accuracy") is not None]
    stopped = metrics.get("stopped")
    eps = history[-1].get("epsilon") if history else None
    if eps is None and isinstance(stopped, dict) and stopped.get("epsilon"):
        eps = stopped["epsilon"][cfg.accountant]["max"]
    note = stopped.get("reason", "") if isinstance(stopped, dict) else ""
    aborted = len(history) - len(done)
    if aborted:
        note = (note + "; " if note else "") + f"{aborted} round(s) aborted by the protocol (no update)"
    return {
        "accuracy": done[-1]["accuracy"] if done else None,
        "epsilon": eps if cfg.dp != "off" else None,
        "delta": cfg.delta if cfg.dp != "off" else None,
        "rounds": int(history[-1]["round"]) if history else 0,
        "seconds": seconds,
        "train_seconds": sum(float(r.get("seconds") or 0.0) for r in history),
        "status": "budget-stopped" if stopped else "complete",
        "note": note,
    }


def execute_run(cfg_dict: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Run (or resume, or skip) one combination; returns ``{"action", "result"}``.

    ``action`` is ``skipped`` (already finished), ``resumed`` (continued after its last
    checkpointed round), ``restarted`` (a folder without a usable checkpoint was cleared) or
    ``ran``. The result is also written to ``run_dir/sweep_run.json`` (atomically, last), which
    is what marks the run finished. Runs in the driver or in a Ray worker.
    """
    from secure_fed.report.html import render_report
    from secure_fed.run.trainer import Trainer

    cfg = TrainConfig.from_dict(cfg_dict)
    folder = Path(run_dir)
    row = finished_row(folder, cfg)
    if row is not None:
        return {"action": "skipped", "result": row}
    t0 = time.perf_counter()
    resumable = (folder / "checkpoint.pt").exists() and _same_config(folder, cfg)
    if resumable:
        trainer = Trainer(cfg, progress=False, log=lambda s: None, run_dir=folder)
        try:
            trainer.resume_from(folder)
        except BaseException:
            trainer.close()
            raise
        action = "resumed"
    else:
        # Nothing was checkpointed (killed before its first round completed), or the folder
        # holds something else: start from an empty folder so no stale file survives. Only
        # the privacy journal of a hardened run is kept and counted: a sum released before
        # the kill had fresh noise that the restart will not draw again (as on resume).
        action = "restarted" if folder.exists() and any(folder.iterdir()) else "ran"
        keep = cfg.hardened and (folder / JOURNAL).exists() and _same_config(folder, cfg)
        if folder.exists():
            for child in folder.iterdir():
                if keep and child.name == JOURNAL:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(cfg, progress=False, log=lambda s: None, run_dir=folder)
        if keep:  # the trainer's own recovery, as resume_from does it (0 rounds complete)
            trainer.recover_interrupted_releases(folder, 0)
    try:
        metrics = trainer.run()
        render_report(folder)
    finally:
        trainer.close()  # the run folder's lock, also when the run failed
    result = _result(cfg, metrics, time.perf_counter() - t0)
    write_json(folder / MARKER, {"result": result, "action": action})
    return {"action": action, "result": result}


# -- tables ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One run of the sweep as shown in sweep.csv and sweep.html."""

    spec: RunSpec
    result: dict[str, Any] = dataclasses.field(default_factory=lambda: {"status": "pending"})
    action: str | None = None  # what this invocation did: ran/resumed/restarted/skipped/failed

    @property
    def status(self) -> str:
        return str(self.result.get("status", "pending"))

    def cells(self, keys: Sequence[str], out: Path) -> list[str]:
        r = self.result
        run_dir = os.path.relpath(self.spec.run_dir, out)
        vals: list[Any] = [self.spec.params[k] for k in keys]
        vals += [r.get("accuracy"), r.get("epsilon"), r.get("delta"), r.get("rounds"),
                 r.get("seconds"), r.get("train_seconds"), self.status, run_dir, r.get("note", "")]
        return ["" if v is None else format_value(v) if not isinstance(v, str) else v for v in vals]


def csv_text(grid: Grid, rows: Sequence[Row], out: Path) -> str:
    """sweep.csv: a header, then one line per run in grid order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*grid.keys, *RESULT_COLUMNS])
    for row in rows:
        w.writerow(row.cells(grid.keys, out))
    return buf.getvalue()


@dataclass(frozen=True)
class Point:
    """The runs of one line at one privacy setting: seeds aggregated."""

    group: tuple[tuple[str, Any], ...]
    setting: tuple[tuple[str, Any], ...]
    epsilons: tuple[float, ...]
    accuracies: tuple[float, ...]

    @property
    def x(self) -> float:
        return sum(self.epsilons) / len(self.epsilons)

    @property
    def y(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def points(grid: Grid, rows: Sequence[Row]) -> tuple[list[Point], list[Point]]:
    """(points with an epsilon, DP-off points) over the finished runs.

    A line is one combination of the swept values other than the privacy settings
    (:data:`EPSILON_KEYS`) and the seed; a point is one privacy setting on it, averaged over
    seeds. Runs without DP have no epsilon: they come back separately (drawn as reference
    lines).
    """
    line_keys = [k for k in grid.keys if k not in EPSILON_KEYS and k != SEED_KEY]
    set_keys = [k for k in grid.keys if k in EPSILON_KEYS]
    buckets: dict[tuple[Any, ...], list[tuple[float | None, float]]] = {}
    for row in rows:
        acc = _finite(row.result.get("accuracy"))
        if row.status not in ("complete", "budget-stopped") or acc is None:
            continue
        group = tuple((k, row.spec.params[k]) for k in line_keys)
        setting = tuple((k, row.spec.params[k]) for k in set_keys)
        buckets.setdefault((group, setting), []).append((_finite(row.result.get("epsilon")), acc))
    with_eps: list[Point] = []
    no_dp: dict[tuple[tuple[str, Any], ...], list[float]] = {}
    for (group, setting), vals in buckets.items():
        eps = tuple(e for e, _ in vals if e is not None)
        if len(eps) == len(vals):
            with_eps.append(Point(group, setting, eps, tuple(a for _, a in vals)))
        elif not eps:  # without DP the privacy settings change nothing: one point per line
            no_dp.setdefault(group, []).extend(a for _, a in vals)
    return with_eps, [Point(g, (), (), tuple(accs)) for g, accs in no_dp.items()]


def _label(group: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in group) or "all runs"


def plot_privacy_utility(grid: Grid, rows: Sequence[Row]) -> Any:
    """The privacy-utility plot (a :class:`secure_fed.report.plots.Plot`), or None before any run
    has finished. x: epsilon spent (mean over seeds); y: final accuracy (mean over seeds);
    bars: min-max range over seeds on both axes. DP-off runs: dashed horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from secure_fed.report.plots import Plot, _png

    pts, no_dp = points(grid, rows)
    if not pts and not no_dp:
        return None
    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("epsilon spent (max over clients, at the run's delta)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, alpha=0.3)
    # a run without DP shares its colour with the DP line that differs from it only in `dp`
    def hue(group: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        return tuple((k, v) for k, v in group if k != "dp")

    hues = list(dict.fromkeys(hue(p.group) for p in [*pts, *no_dp]))
    color = {h: f"C{i % 10}" for i, h in enumerate(hues)}
    described = []
    for group in dict.fromkeys(p.group for p in pts):
        line = sorted((p for p in pts if p.group == group), key=lambda p: p.x)
        xs, ys = [p.x for p in line], [p.y for p in line]
        xerr = [[p.x - min(p.epsilons) for p in line], [max(p.epsilons) - p.x for p in line]]
        yerr = [[p.y - min(p.accuracies) for p in line], [max(p.accuracies) - p.y for p in line]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", markersize=4, capsize=3,
                    color=color[hue(group)], label=_label(group))
        described.append(f"{_label(group)}: " + "; ".join(
            f"epsilon {p.x:.3g}, accuracy {p.y:.3g} (n={len(p.accuracies)})" for p in line))
    for p in no_dp:
        ax.axhline(p.y, color=color[hue(p.group)], linestyle="--", linewidth=1, label=f"{_label(p.group)} (no DP)")
        described.append(f"{_label(p.group)} without DP: accuracy {p.y:.3g} (n={len(p.accuracies)})")
    ax.legend(loc="best", fontsize="small")
    png = _png(fig)
    alt = ("Privacy-utility plot: final test accuracy versus epsilon spent, one line per "
           "setting, points averaged over seeds with min-max bars. " + " | ".join(described))
    return Plot("Accuracy against epsilon spent (mean over seeds; bars: min to max)", png, alt)


def html_text(grid: Grid, rows: Sequence[Row], out: Path, title: str = "Privacy-utility sweep") -> str:
    """sweep.html: one self-contained page (plot embedded as a PNG data URI, no scripts)."""
    from secure_fed.report.html import CSP, CSS
    from secure_fed.report.text import esc, fmt, kv_table

    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    summary = kv_table([("runs", len(rows)), *((s, n) for s, n in counts.items() if n)]
                       + [("swept", "; ".join(f"{k} = {', '.join(format_value(v) for v in vs)}" for k, vs in grid.axes))]
                       + [("fixed", "; ".join(f"{k} = {format_value(v)}" for k, v in grid.base.items()) or "defaults")])
    plot = plot_privacy_utility(grid, rows)
    figure = plot.html() if plot is not None else "<p class='missing'>No run has finished yet.</p>"
    pts, no_dp = points(grid, rows)
    set_keys = [k for k in grid.keys if k in EPSILON_KEYS]
    head = "".join(f"<th>{esc(h)}</th>" for h in ["line", *set_keys, "seeds", "epsilon spent (mean, min-max)",
                                                   "accuracy (mean, min-max)"])
    body = ""
    for p in sorted([*pts, *no_dp], key=lambda p: (_label(p.group), p.x if p.epsilons else -1.0)):
        eps = (f"{fmt(p.x)} ({fmt(min(p.epsilons))}&ndash;{fmt(max(p.epsilons))})" if p.epsilons else "no DP")
        acc = f"{fmt(p.y)} ({fmt(min(p.accuracies))}&ndash;{fmt(max(p.accuracies))})"
        body += (f"<tr><td>{esc(_label(p.group))}</td>" + "".join(f"<td>{fmt(dict(p.setting).get(k))}</td>" for k in set_keys)
                 + f"<td>{len(p.accuracies)}</td><td>{eps}</td><td>{acc}</td></tr>")
    points_table = (f"<div class='scroll'><table class='grid'><tr>{head}</tr>{body}</table></div>" if body else "")
    cols = [*grid.keys, *RESULT_COLUMNS]
    run_rows = ""
    for row in rows:
        cells = row.cells(grid.keys, out)
        tds = []
        for col, cell in zip(cols, cells, strict=True):
            value: Any = cell
            if col in ("accuracy", "epsilon", "seconds", "train_seconds") and cell:
                value = float(cell)
            if col == "run_dir":
                tds.append(f"<td><a href='{esc(Path(cell).as_posix())}/report.html'>{esc(cell)}</a></td>")
            else:
                tds.append(f"<td>{fmt(value) if cell else '&ndash;' if col != 'note' else ''}</td>")
        run_rows += "<tr>" + "".join(tds) + "</tr>"
    runs_table = ("<div class='scroll'><table class='grid'><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols)
                  + f"</tr>{run_rows}</table></div>")
    x_note = ("<p class='note'>x is the epsilon each run actually spent (by its accountant, at its "
              "delta), not its target: a run stops before a round that would exceed its target, "
              "and the plan assumes the fewest survivors, so it usually spends less.</p>")
    body_html = (f"<h1>{esc(title)}</h1>{summary}"
                 f"<section id='plot'><h2>Privacy-utility</h2>{figure}{x_note}{points_table}</section>"
                 f"<section id='runs'><h2>Runs</h2>{runs_table}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body_html}</body></html>\n")


def write_tables(grid: Grid, rows: Sequence[Row], out: Path) -> None:
    """Write sweep.csv and sweep.html atomically (each is either the old or the new file)."""
    atomic_write_bytes(out / CSV_NAME, csv_text(grid, rows, out).encode("utf-8"))
    atomic_write_bytes(out / HTML_NAME, html_text(grid, rows, out).encode("utf-8"))


# -- driver ----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Every run of the sweep, in grid order, with what this invocation did to it."""

    grid: Grid
    rows: list[Row]
    out: Path

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "failed"]

    def actions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            if r.action is not None:
                out[r.action] = out.get(r.action, 0) + 1
        return out


OnFinish = Callable[[Row], None]


def _fail(row: Row, exc: BaseException) -> None:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    row.result = {"status": "failed", "note": f"{type(exc).__name__}: {msg}"[:500]}
    row.action = "failed"


def _line(row: Row) -> str:
    r = row.result
    name = row.spec.run_dir.name
    if row.status == "failed":
        return f"{name}: FAILED ({r.get('note')})"
    eps = f", epsilon {r['epsilon']:.3f}" if r.get("epsilon") is not None else ""
    acc = f"accuracy {r['accuracy']:.4f}" if r.get("accuracy") is not None else "no accuracy (no round ran)"
    return f"{name}: {row.action}, {acc}{eps}, {r.get('rounds')} rounds, {r.get('seconds', 0.0):.1f}s"


def _run_local(todo: list[Row], finish: Callable[[Row], None]) -> None:
    for row in todo:
        try:
            out = execute_run(row.spec.config.to_dict(), str(row.spec.run_dir))
        except Exception as exc:  # one failed run must not stop the rest; it is retried next time
            _fail(row, exc)
        else:
            row.result, row.action = out["result"], out["action"]
        finish(row)


def _run_ray(todo: list[Row], finish: Callable[[Row], None], address: str | None,
             workers: int, quiet: bool) -> None:
    from secure_fed.executor.raysupport import start_ray

    ray, started = start_ray(address, workers, quiet)
    try:
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=0)(execute_run)
        pending = list(todo)
        running: dict[Any, Row] = {}
        try:
            while pending or running:
                while pending and len(running) < limit:
                    row = pending.pop(0)
                    running[task.remote(row.spec.config.to_dict(), str(row.spec.run_dir))] = row
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    row = running.pop(ref)
                    try:
                        out = ray.get(ref)
                    except Exception as exc:  # RayTaskError wraps the run's own exception
                        _fail(row, getattr(exc, "cause", None) or exc)
                    else:
                        row.result, row.action = out["result"], out["action"]
                    finish(row)
        except BaseException:
            for ref in running:  # interrupted: stop the in-flight runs; their checkpoints stay
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def run_sweep(grid: Grid, out: Path, *, executor: str = "local", ray_address: str | None = None,
              workers: int = 0, progress: bool = True,
              on_finish: OnFinish | None = None) -> SweepResult:
    """Run every combination not yet finished and write sweep.csv / sweep.html.

    ``on_finish(row)`` is called after each run finishes (or fails) and after the tables
    are rewritten. On KeyboardInterrupt the tables are written with the runs finished so far
    (the others are ``pending``) and the interrupt propagates; running the sweep again
    resumes it.
    """
    from tqdm import tqdm

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if workers < 0:
        raise ConfigError(f"--workers: must be >= 0 (0 = as many runs at once as Ray has CPUs; got {workers})")
    if executor == "local" and ray_address is not None:
        raise ConfigError("--ray-address: needs --executor ray")
    if executor == "local" and workers > 1:
        raise ConfigError("--workers: the local executor runs one training at a time; use --executor ray")
    if executor == "ray":
        from secure_fed.executor.raysupport import import_ray

        import_ray()  # before any work: a missing Ray is a usage error
    out = Path(out).absolute()
    specs = expand(grid, out)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    rows = [Row(spec) for spec in specs]
    todo: list[Row] = []
    for row in rows:
        done = finished_row(row.spec.run_dir, row.spec.config)
        if done is not None:
            row.result, row.action = done, "skipped"
        else:
            todo.append(row)
    write_tables(grid, rows, out)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="sweep", unit="run",
               disable=not progress, dynamic_ncols=True)

    def finish(row: Row) -> None:
        bar.update(1)
        if progress:
            bar.write(_line(row))
        write_tables(grid, rows, out)
        if on_finish is not None:
            on_finish(row)

    try:
        if executor == "local":
            _run_local(todo, finish)
        else:
            _run_ray(todo, finish, ray_address, workers, quiet=not progress)
    finally:
        bar.close()
        write_tables(grid, rows, out)
    return SweepResult(grid, rows, out)


__all__ = ["Row", "SweepResult", "execute_run", "finished_row", "points", "run_sweep", "write_tables"]
