"""Run the empirical privacy audits on a run folder and keep their evidence (operator side).

:func:`run_audits` imports each selected audit by name (``secure_fed.audit.<module>``),
runs it, checks that its result follows the audit contract (see :mod:`secure_fed.audit`),
writes every result into ``RUN_DIR/audit_results.json`` atomically (results of audits not
run this time are kept from an earlier file), re-renders ``report.html`` with its
"Empirical privacy audits" section, and only then raises
:class:`~secure_fed.errors.AuditFailed` if an audit's ``passed`` is False: the evidence
is on disk before anything fails.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from secure_fed.errors import AuditFailed, ConfigError
from secure_fed.run.evidence import check_evidence
from secure_fed.run.rundir import RESULTS_NAME, atomic_write_bytes, read_audit_results

FORMAT = 1
AUDITS: dict[str, tuple[str, str]] = {
    "inversion": ("secure_fed.audit.inversion", "audit_inversion"),
    "one-run": ("secure_fed.audit.one_run", "audit_one_run"),
    "membership": ("secure_fed.audit.membership", "audit_membership"),
}
"""Audit name -> (module, function). Every function takes ``(run_dir, *, seed, <options>)``
and names each option it accepts as a keyword parameter (no ``**kwargs``), so that every
selected audit's options are checked before the first audit starts."""
RESERVED = {"seed": "--seed", "shadow_runs": "--shadow-runs", "progress": "--quiet"}
"""Keyword parameters the runner fills from its own arguments (the flag that sets each)."""
PLOT_SCALES = ("linear", "log")

AuditFn = Callable[..., dict[str, Any]]


def parse_which(value: str | Sequence[str]) -> list[str]:
    """Audit names from ``--which`` (comma-separated or a sequence), in the given order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(i).strip() for i in items if str(i).strip()]
    if not names:
        raise ConfigError(f"--which: name at least one audit ({', '.join(AUDITS)})")
    unknown = [n for n in names if n not in AUDITS]
    if unknown:
        raise ConfigError(f"--which: unknown audit {unknown[0]!r}; choose from {', '.join(AUDITS)}")
    return list(dict.fromkeys(names))


def load_audit(name: str) -> AuditFn:
    """The audit function for ``name``; ConfigError if its module is not installed."""
    if name not in AUDITS:
        raise ConfigError(f"--which: unknown audit {name!r}; choose from {', '.join(AUDITS)}")
    module, attr = AUDITS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(f"--which: the {name!r} audit is not available in this installation "
                          f"(module {module} is missing); choose from the others") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"--which: module {module} has no function {attr}()")
    params = inspect.signature(fn).parameters.values()
    catch_all = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    if catch_all:  # its options could only be checked once it runs, after the audits before it
        raise ConfigError(f"--which: {module}.{attr}() takes **{catch_all[0]}; an audit must name "
                          f"every option it accepts as a keyword parameter")
    if "seed" not in {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}:
        raise ConfigError(f"--which: {module}.{attr}() has no 'seed' parameter; every audit takes --seed")
    return fn


# -- the result contract -----------------------------------------------------------------------
def _clean(v: Any, where: str) -> Any:
    """``v`` as plain JSON (numpy scalars/arrays converted, non-finite floats to None)."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _clean(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x, f"{where}[]") for x in v]
    tolist = getattr(v, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return _clean(tolist(), where)
    raise ConfigError(f"audit result: {where} is a {type(v).__name__}, not JSON-serializable")


def _check_plot(p: Any, where: str) -> None:
    if not isinstance(p, Mapping):
        raise ConfigError(f"audit result: {where} must be an object")
    for key in ("title", "xlabel", "ylabel"):
        if not isinstance(p.get(key), str):
            raise ConfigError(f"audit result: {where}.{key} must be a string")
    for key in ("xscale", "yscale"):
        if p.get(key, "linear") not in PLOT_SCALES:
            raise ConfigError(f"audit result: {where}.{key} must be one of {', '.join(PLOT_SCALES)}")
    series = p.get("series")
    if not isinstance(series, list):
        raise ConfigError(f"audit result: {where}.series must be a list")
    for j, s in enumerate(series):
        if not isinstance(s, Mapping) or not isinstance(s.get("label"), str):
            raise ConfigError(f"audit result: {where}.series[{j}] needs a string label")
        x, y = s.get("x"), s.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
            raise ConfigError(f"audit result: {where}.series[{j}] needs lists x and y of equal length")


def validate_result(name: str, result: Any) -> dict[str, Any]:
    """Check ``result`` against the audit contract and return it as plain JSON."""
    if not isinstance(result, Mapping):
        raise ConfigError(f"audit {name!r} returned a {type(result).__name__}, not a dict")
    clean = _clean(dict(result), name)
    if not isinstance(clean.get("name"), str):
        raise ConfigError(f"audit result {name!r}: 'name' must be a string")
    summary = clean.get("summary")
    if not isinstance(summary, dict) or any(isinstance(v, dict | list) for v in summary.values()):
        raise ConfigError(f"audit result {name!r}: 'summary' must map names to numbers, strings, booleans or null")
    if clean.get("passed") not in (True, False, None):
        raise ConfigError(f"audit result {name!r}: 'passed' must be true, false or null")
    plots = clean.get("plots", [])
    if not isinstance(plots, list):
        raise ConfigError(f"audit result {name!r}: 'plots' must be a list")
    for i, p in enumerate(plots):
        _check_plot(p, f"{name}.plots[{i}]")
    clean.setdefault("plots", [])
    clean.setdefault("raw", {})
    return clean


# -- reading and writing ----------------------------------------------------------------------
def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The parsed ``audit_results.json`` of ``run_dir``, or None if absent or unreadable."""
    return read_audit_results(Path(run_dir) / RESULTS_NAME)[0]


def _write(run_dir: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    previous = read_results(run_dir) or {"audits": {}}
    audits = {k: v for k, v in previous["audits"].items() if k in AUDITS and isinstance(v, dict)}
    audits.update(entries)
    verdicts = [v.get("result", {}).get("passed") for v in audits.values()]
    overall = False if False in verdicts else (True if True in verdicts else None)
    path = run_dir / RESULTS_NAME
    content = {"format": FORMAT, "run": run_dir.resolve().name, "passed": overall,
               "audits": {k: audits[k] for k in AUDITS if k in audits}}
    # runio.write_json sorts keys; an audit's summary keeps the order its audit chose, so the
    # file goes through the same atomic writer unsorted.
    atomic_write_bytes(path, (json.dumps(content, indent=1, allow_nan=False) + "\n").encode())
    return content


def _options_of(fn: AuditFn) -> list[str]:
    """The options an audit accepts: its keyword parameters after ``run_dir``, less
    :data:`RESERVED`."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # [0] is run_dir
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.name not in RESERVED]


def _call_kwargs(fn: AuditFn, name: str, run_dir: Path, seed: int | None, shadow_runs: int,
                 progress: bool, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` is called with; a ConfigError naming the option and the
    audit for an option it does not accept (bad input, exit 2), so that a typo in any
    selected audit's options is found before the first audit starts."""
    known = _options_of(fn)
    for key in options:
        if key in RESERVED:
            raise ConfigError(f"--option: {name}.{key} is set by {RESERVED[key]}, not by --option")
        if key not in known:
            raise ConfigError(f"--option: the {name} audit has no option {key!r} "
                              f"(it takes: {', '.join(known) or 'none'})")
    sig = inspect.signature(fn)
    kw: dict[str, Any] = {"seed": seed, **options}
    if "shadow_runs" in sig.parameters:  # only where the audit declares it
        kw["shadow_runs"] = shadow_runs
    if "progress" in sig.parameters:
        kw["progress"] = progress
    try:
        sig.bind(run_dir, **kw)
    except TypeError as exc:  # e.g. an option without a default that was not given
        raise ConfigError(f"--option: the {name} audit cannot be called with these options ({exc})") from None
    return kw


def run_audits(
    run_dir: Path,
    which: str | Sequence[str] = tuple(AUDITS),
    *,
    seed: int | None = None,
    shadow_runs: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    render: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the selected audits on ``run_dir`` and write ``audit_results.json`` (operator side).

    ``options`` maps an audit name to keyword options for that audit only. Returns the file's
    content. Raises ConfigError for bad input before any audit runs (unknown or unavailable
    audit, an option some selected audit does not take, not a run folder); an audit's own
    error is raised after the results of the audits that finished are written. Raises AuditFailed after writing (and re-rendering the report)
    if any audit's ``passed`` is False.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (run_dir / "config.json").is_file():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a run folder (no config.json)")
    check_evidence(run_dir)  # a run whose chain, config.json or epsilons do not hold together is not audited
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"--seed: must be an integer >= 0 (got {seed!r})")
    if not isinstance(shadow_runs, int) or shadow_runs < 0:
        raise ConfigError(f"--shadow-runs: must be an integer >= 0 (got {shadow_runs!r})")
    names = parse_which(which)
    options = dict(options or {})
    stray = set(options) - set(names)
    if stray:
        raise ConfigError(f"--option: options given for audits not selected by --which: {', '.join(sorted(stray))}")
    fns = {n: load_audit(n) for n in names}  # every selected audit must exist before any runs
    # ... and every option of every selected audit must be one it takes
    kwargs = {n: _call_kwargs(fns[n], n, run_dir, seed, shadow_runs, progress, options.get(n, {}))
              for n in names}
    entries: dict[str, dict[str, Any]] = {}
    error: BaseException | None = None
    for name in names:
        t0 = time.perf_counter()
        try:
            result = fns[name](run_dir, **kwargs[name])
            entries[name] = {"seed": seed, "seconds": time.perf_counter() - t0, "result": validate_result(name, result)}
        except Exception as exc:  # keep the finished audits' evidence, then re-raise below
            error = exc
            break
        if log is not None:
            log(_line(name, entries[name]))
    content = _write(run_dir, entries) if entries else None
    if content is not None and render:
        from secure_fed.report.html import render as render_report

        render_report(run_dir)
    if error is not None:
        raise error
    assert content is not None  # no error: every selected audit ran and was written
    failed = [n for n in names if entries[n]["result"]["passed"] is False]
    if failed:
        why = "; ".join(f"{n}: {entries[n]['result']['summary'].get('verdict', 'failed')}" for n in failed)
        raise AuditFailed(f"{', '.join(failed)} failed ({why}); evidence in {RESULTS_NAME}")
    return content


def _line(name: str, entry: Mapping[str, Any]) -> str:
    verdict = {True: "passed", False: "FAILED", None: "measured (no pass/fail claim)"}[entry["result"]["passed"]]
    return f"{name}: {verdict} in {entry['seconds']:.1f}s"


__all__ = ["AUDITS", "RESULTS_NAME", "load_audit", "parse_which", "read_results",
           "run_audits", "validate_result"]
