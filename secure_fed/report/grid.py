"""The grid of a privacy-utility sweep: TrainConfig fields and their values (from a TOML file and --set/--fix), one RunSpec per combination with a deterministic run id, and the sweep's file names and table columns."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError

CSV_NAME = "sweep.csv"
HTML_NAME = "sweep.html"
RUNS_DIR = "runs"
MARKER = "sweep_run.json"
"""Written last into a run folder when the run has finished: the sweep's row for it."""

RESERVED = {
    "out": "runs go to --out/runs/<run-id>; use the sweep's --out",
    "run_id": "runs go to --out/runs/<run-id>; use the sweep's --out",
    "executor": "each run's clients run in the run's own process; the sweep's --executor places the runs",
    "ray_address": "the sweep's --ray-address places the runs",
    "workers": "the sweep's --workers sets how many runs run at once",
}
"""Fields the sweep sets itself: where a run is written and where it runs. None of them
changes a run's numbers, so none is part of a run's identity (its id and resume check)."""
EPSILON_KEYS = ("target_epsilon", "noise_multiplier")
"""Swept fields that move a run along the privacy axis (not separate lines in the plot)."""
SEED_KEY = "seed"
RESULT_COLUMNS = ("accuracy", "epsilon", "delta", "rounds", "seconds", "train_seconds",
                  "status", "run_dir", "note")
STATUSES = ("complete", "budget-stopped", "failed", "pending")


# -- grid ------------------------------------------------------------------------------------
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def field_name(key: str, where: str) -> str:
    """The TrainConfig field for ``key`` (hyphen or underscore spelling); ConfigError otherwise."""
    name = key.strip().replace("-", "_")
    if name in RESERVED:
        raise ConfigError(f"{where}: {key!r} is set by the sweep ({RESERVED[name]})")
    if name not in _FIELD_TYPES:
        raise ConfigError(f"{where}: unknown key {key!r} (keys are train options, e.g. alpha, "
                          "target-epsilon, seed; see run_secure.py train --help)")
    return name


def _base_type(name: str) -> tuple[type, bool]:
    """(value type, whether None is allowed) of a TrainConfig field."""
    hint = _FIELD_TYPES[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_value(name: str, text: str, where: str) -> Any:
    """``text`` (from the command line or a TOML string) as a value of field ``name``."""
    kind, optional = _base_type(name)
    t = text.strip()
    if optional and t.lower() in ("none", "null"):
        return None
    try:
        if kind is bool:
            if t.lower() in _TRUE:
                return True
            if t.lower() in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(t)
        if kind is float:
            v = float(t)
            if not math.isfinite(v):
                raise ValueError
            return v
    except ValueError:
        none = " or none" if optional else ""
        raise ConfigError(f"{where}: {name} needs {kind.__name__} values{none} (got {text!r})") from None
    return t


def coerce_value(name: str, value: Any, where: str) -> Any:
    """A TOML value as a value of field ``name`` (strings go through :func:`parse_value`)."""
    if isinstance(value, str):
        return parse_value(name, value, where)
    kind, optional = _base_type(name)
    ok = ((kind is bool and isinstance(value, bool))
          or (kind is int and isinstance(value, int) and not isinstance(value, bool))
          or (kind is float and isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value)))
    if not ok:
        none = " (or \"none\")" if optional else ""
        raise ConfigError(f"{where}: {name} needs {kind.__name__} values{none} (got {value!r})")
    return float(value) if kind is float else value


@dataclass(frozen=True)
class Grid:
    """The swept fields with their values (in the given order) and the fixed fields."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    base: Mapping[str, Any]

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.axes]

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)


def _split_assignment(item: str, flag: str) -> tuple[str, str]:
    key, sep, values = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag}: expected key=value (got {item!r})")
    return key, values


def _add_axis(axes: dict[str, tuple[Any, ...]], name: str, values: Sequence[Any], where: str) -> None:
    if not values:
        raise ConfigError(f"{where}: {name} has no values")
    seen: list[Any] = []
    for v in values:
        if any(v == s and type(v) is type(s) for s in seen):
            raise ConfigError(f"{where}: {name} lists the value {v!r} twice")
        seen.append(v)
    axes[name] = tuple(values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("--grid: reading TOML needs Python >= 3.11 or pip install tomli") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--grid: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--grid: {path} is not valid TOML ({exc})") from None


def load_grid(path: Path | None, sets: Iterable[str] = (), fixes: Iterable[str] = ()) -> Grid:
    """The grid from a TOML file (``[grid]`` key = [values], optional ``[base]`` key = value)
    and ``--set key=v1,v2`` / ``--fix key=v`` items, which extend or override the file."""
    axes: dict[str, tuple[Any, ...]] = {}
    base: dict[str, Any] = {}
    if path is not None:
        doc = _read_toml(path)
        extra = set(doc) - {"grid", "base"}
        if extra:
            raise ConfigError(f"--grid: {path} has unknown tables {sorted(extra)} (only [grid] and [base])")
        for table in ("grid", "base"):
            if not isinstance(doc.get(table, {}), dict):
                raise ConfigError(f"--grid: {table} must be a table ([{table}])")
        for key, values in doc.get("grid", {}).items():
            where = f"--grid [grid] {key}"
            name = field_name(key, where)
            if name in axes:
                raise ConfigError(f"{where}: {name} is given twice")
            if not isinstance(values, list):
                raise ConfigError(f"{where}: needs a list of values, e.g. {key} = [0.1, 0.5]")
            _add_axis(axes, name, [coerce_value(name, v, where) for v in values], where)
        for key, value in doc.get("base", {}).items():
            where = f"--grid [base] {key}"
            name = field_name(key, where)
            if name in base:
                raise ConfigError(f"{where}: {name} is given twice")
            base[name] = coerce_value(name, value, where)
    for item in sets:
        key, text = _split_assignment(item, "--set")
        name = field_name(key, f"--set {key}")
        _add_axis(axes, name, [parse_value(name, v, f"--set {key}") for v in text.split(",")], f"--set {key}")
        base.pop(name, None)
    for item in fixes:
        key, text = _split_assignment(item, "--fix")
        name = field_name(key, f"--fix {key}")
        base[name] = parse_value(name, text, f"--fix {key}")
        axes.pop(name, None)
    both = set(axes) & set(base)
    if both:
        k = sorted(both)[0]
        raise ConfigError(f"--grid: {k} is both swept ([grid]) and fixed ([base]); keep one")
    if not axes:
        raise ConfigError("--grid: nothing to sweep: give a [grid] table or --set key=v1,v2,...")
    return Grid(tuple(axes.items()), dict(base))


# -- runs ------------------------------------------------------------------------------------
def format_value(v: Any) -> str:
    """A swept value as text (CSV cells, run ids): exact for floats, lower-case for bools/None."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _slug(params: Mapping[str, Any]) -> str:
    text = "_".join(f"{k}={format_value(v)}" for k, v in params.items())
    safe = "".join(c if c.isalnum() or c in "._=+-" else "-" for c in text)
    return safe[:120]


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that make a run what it is (everything but where it is written and runs)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RESERVED}


def run_id_for(params: Mapping[str, Any], cfg: TrainConfig) -> str:
    """Deterministic run id: the swept values, then 10 hex digits of SHA-256 of the whole
    configuration (so changing a fixed value gives new runs instead of reusing old ones)."""
    digest = hashlib.sha256(json.dumps(run_identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return f"{_slug(params)}-{digest}"


@dataclass(frozen=True)
class RunSpec:
    """One combination: its swept values, its configuration and its run folder."""

    params: Mapping[str, Any]
    config: TrainConfig
    run_dir: Path


def expand(grid: Grid, out: Path) -> list[RunSpec]:
    """Every combination of the grid (first key varies slowest), each validated by
    TrainConfig (a bad combination raises ConfigError naming the flag and the combination).

    Paths are made absolute here, against the sweep's working directory, since a Ray
    worker may run elsewhere."""
    runs_dir = Path(out).absolute() / RUNS_DIR
    specs: list[RunSpec] = []
    names = grid.keys
    for values in itertools.product(*(v for _, v in grid.axes)):
        params = dict(zip(names, values, strict=True))
        fields = {**grid.base, **params}
        if fields.get("data_root"):
            fields["data_root"] = str(Path(fields["data_root"]).absolute())
        try:
            cfg = TrainConfig(**fields, out=str(runs_dir))
        except ConfigError as exc:
            combo = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
            raise ConfigError(f"{exc} (in the combination {combo})") from None
        run_id = run_id_for(params, cfg)
        specs.append(RunSpec(params, cfg.replace(run_id=run_id), runs_dir / run_id))
    return specs


__all__ = ["CSV_NAME", "EPSILON_KEYS", "HTML_NAME", "Grid", "RunSpec", "expand", "field_name", "load_grid",
           "parse_value", "run_id_for", "run_identity"]
