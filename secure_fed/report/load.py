"""Reading a run folder for the report: config, round and stop records, the hash-chain check and the audit results; and the record accessors the sections and plots share."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.dropout import STAGES
from secure_fed.errors import ConfigError
from secure_fed.run.rundir import (
    RESULTS_NAME,
    AuditChainError,
    read_audit_results,
    record_digest,
    verify_chain,
)

REPORT_NAME = "report.html"
UNITS = {"sample": "one sample (adding or removing one training example)",
         "client": "one client (adding or removing all of one client's data)"}
AGGREGATORS = {"off": "plaintext", "plaintext": "plaintext", "secagg": "secagg",
               "secagg+": "secagg+"}


# -- reading the run folder ---------------------------------------------------------------
@dataclass(frozen=True)
class ChainStatus:
    """Outcome of the hash-chain check: ``ok`` with ``records`` verified, or the error text."""

    ok: bool
    records: int
    message: str
    head: str | None  # SHA-256 of the last readable record (compare with a copy kept elsewhere)


@dataclass(frozen=True)
class RunData:
    """What the report shows: the config, round and stop records, and the chain status."""

    name: str
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    stops: list[dict[str, Any]]
    ignored: int  # lines that are not JSON objects of kind round/stop
    chain: ChainStatus
    audits: dict[str, Any] | None = None  # audit_results.json; {"error": ...} if unreadable
    resumes: tuple[dict[str, Any], ...] = ()  # resume records, in chain order
    evidence: ChainStatus | None = None  # config.json hash and every epsilon re-derived (None: chain broken)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is this a run folder?)")
    try:
        obj = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return obj


def _read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """All JSON-object lines of ``audit.jsonl`` and the number of unreadable lines."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is this a run folder?)")
    records: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad += 1
    return records, bad


def check_chain(path: Path, records: Sequence[dict[str, Any]]) -> ChainStatus:
    """Verify the audit log's hash chain (server side); never raises for a bad log."""
    head = record_digest(records[-1]) if records else None
    try:
        n = verify_chain(path)
    except AuditChainError as exc:  # the report names the file, not this machine's path
        return ChainStatus(False, 0, str(exc).replace(str(path), path.name), head)
    except (AttributeError, TypeError):  # a line that is JSON but not an object
        return ChainStatus(False, 0, f"{path.name}: a record is not a JSON object", head)
    return ChainStatus(True, n, f"OK ({n} records)", head)


def check_evidence(run_dir: Path, records: list[dict[str, Any]], config: dict[str, Any], chain: ChainStatus) -> ChainStatus | None:
    """For a verified chain: failed when config.json is not the one the chain recorded or a
    recorded epsilon is not what the run's accountants give for the chain's ledger events."""
    from secure_fed.run.evidence import EvidenceError, check_config_hash, check_epsilons

    if not chain.ok:
        return None
    try:
        check_config_hash(run_dir, records)
        delta = _num(config.get("delta"))
        if any(r.get("epsilon") is not None for r in records):
            if delta is None:
                raise EvidenceError("config.json has no numeric delta to re-derive epsilon at")
            check_epsilons(records, delta)
    except (EvidenceError, ConfigError) as exc:
        return ChainStatus(False, chain.records, str(exc).replace(str(run_dir) + "/", ""), chain.head)
    return chain


def _kind(rec: dict[str, Any]) -> str | None:
    kind = rec.get("kind")
    if kind is None and "round" in rec:  # records written before ``kind`` existed
        return "round"
    return kind if isinstance(kind, str) else None


def load_run(run_dir: Path) -> RunData:
    """Read ``config.json`` and ``audit.jsonl`` of ``run_dir`` and check the chain.

    Raises FileNotFoundError if either file is missing and ConfigError if config.json is
    unreadable; a damaged audit log is reported in :attr:`RunData.chain` instead.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    config = _read_config(run_dir / "config.json")
    audit = run_dir / "audit.jsonl"
    records, bad = _read_records(audit)
    chain = check_chain(audit, records)
    evidence = check_evidence(run_dir, records, config, chain)
    rounds = [r for r in records if _kind(r) == "round"]
    stops = [r for r in records if _kind(r) == "stop"]
    resumes = tuple(r for r in records if _kind(r) == "resume")
    configs = [r for r in records if _kind(r) == "config"]
    ignored = bad + len(records) - len(rounds) - len(stops) - len(resumes) - len(configs)
    return RunData(run_dir.resolve().name, config, rounds, stops, ignored, chain,
                   _read_audits(run_dir / RESULTS_NAME), resumes, evidence)


def _read_audits(path: Path) -> dict[str, Any] | None:
    """``audit_results.json`` if present: its object, or ``{"error": why}`` if unreadable."""
    obj, why = read_audit_results(path)
    return {"error": why} if why is not None else obj


# -- tolerant field access -----------------------------------------------------------------
def _num(v: Any) -> float | None:
    """``v`` as a float if it is a real number (not bool), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range
        return None


def _finite(v: Any) -> float | None:
    x = _num(v)
    return x if x is not None and math.isfinite(x) else None


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def survivors(rec: dict[str, Any]) -> dict[str, list[Any]]:
    """Stage -> surviving ids (an old-style plain list counts as the ``masked`` stage)."""
    s = rec.get("survivors")
    if isinstance(s, list):
        return {"masked": s}
    return {str(k): _list(v) for k, v in _dict(s).items()}


def stage_order(names: Iterable[str]) -> list[str]:
    """Protocol stages in protocol order, unknown names after them alphabetically."""
    names = set(names)
    return [s for s in STAGES if s in names] + sorted(names - set(STAGES))


def summed(rec: dict[str, Any]) -> int | None:
    """Number of clients whose inputs are in the sum: the record's ``summed`` list (a client
    that dropped after uploading is still in the sum), else the last recorded stage."""
    if isinstance(rec.get("summed"), list):
        return len(rec["summed"])
    s = survivors(rec)
    if not s:
        return None
    return len(s[stage_order(s)[-1]])


def epsilons(rec: dict[str, Any]) -> dict[str, float | None]:
    """Accountant -> epsilon (max over clients) of a round or stop record."""
    out: dict[str, float | None] = {}
    for acc, v in _dict(rec.get("epsilon")).items():
        out[str(acc)] = _num(v.get("max")) if isinstance(v, dict) else _num(v)
    return out


def accountants(recs: Iterable[dict[str, Any]]) -> list[str]:
    """Accountants that appear in any record, sorted."""
    return sorted({a for r in recs for a in epsilons(r)})


def last_with(recs: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The last record whose ``key`` is a non-empty object."""
    for r in reversed(recs):
        if _dict(r.get(key)):
            return r
    return None


def dp_enabled(run: RunData) -> bool:
    """True if the config asks for DP or any round logged DP parameters."""
    mode = run.config.get("dp")
    on = mode not in (None, "off", False, "none")
    return on or last_with(run.rounds, "dp") is not None


def aggregator(run: RunData) -> str:
    """plaintext | secagg | secagg+ (from the config, else from the last round)."""
    mode = run.config.get("secagg")
    if isinstance(mode, str) and mode in AGGREGATORS:
        return AGGREGATORS[mode]
    last = run.rounds[-1].get("aggregator") if run.rounds else None
    return str(last) if last is not None else "plaintext"
