"""What a run folder's audit chain proves, checked without trusting anything else in it.

:func:`check_evidence` verifies, in order: the hash chain of ``audit.jsonl``; that its first
record is the ``config`` record and that ``config.json`` hashes to the SHA-256 the chain
recorded last for it; and that every epsilon a record states equals the epsilon the run's
accountants give for the privacy events the chain has charged up to that record.

The events a record charges: a ``round`` record its ``events``; a ``resume`` record removes
``uncharged`` (a reproducible re-run redraws the identical release, so it is counted once)
and adds ``charged`` (a hardened release recovered from the journal, whose noise will not be
drawn again). :func:`charged_events` replays that rule; the trainer writes its resume record
as the difference between this replay and the ledger it resumed with, so the two agree by
construction and a checker needs nothing but the chain.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fed.errors import SecureFedError
from secure_fed.run.rundir import AuditChainError, canonical, file_sha256, read_audit, verify_chain

REL_TOL = 1e-9


class EvidenceError(SecureFedError):
    """The run folder's evidence does not hold together; the message names the record."""


def _key(event: Any) -> bytes:
    return canonical(event) if isinstance(event, dict) else json.dumps(event).encode()


def apply_record(charged: list[dict[str, Any]], rec: dict[str, Any]) -> None:
    """Update ``charged`` (the chain's ledger events, in order) with record ``rec``."""
    kind = rec.get("kind", "round" if "round" in rec else None)
    if kind == "round":
        charged.extend(e for e in rec.get("events") or [] if isinstance(e, dict))
    elif kind == "resume":
        drop = Counter(_key(e) for e in rec.get("uncharged") or [])
        keep = []
        for ev in reversed(charged):  # the latest copies are the ones the re-run replaces
            k = _key(ev)
            if drop[k] > 0:
                drop[k] -= 1
                continue
            keep.append(ev)
        charged[:] = list(reversed(keep))
        charged.extend(e for e in rec.get("charged") or [] if isinstance(e, dict))


def charged_events(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger events the chain has charged after ``records``."""
    out: list[dict[str, Any]] = []
    for rec in records:
        apply_record(out, rec)
    return out


def event_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of ``a`` not in ``b`` (as multisets)."""
    have = Counter(_key(e) for e in b)
    out = []
    for ev in a:
        k = _key(ev)
        if have[k] > 0:
            have[k] -= 1
        else:
            out.append(ev)
    return out


def _epsilons(events: list[dict[str, Any]], delta: float, names: Iterable[str]) -> dict[str, dict[str, float]]:
    from dp.accountants import epsilon_with_fallback
    from dp.events import ALL, event_from_dict

    evs = [event_from_dict(e) for e in events]
    subjects = sorted({e.subject for e in evs if e.subject != ALL}) or [ALL]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        out[name] = {s: epsilon_with_fallback([e for e in evs if e.subject in (s, ALL)], delta, name)[0] for s in subjects}
    return out


def _close(a: Any, b: float) -> bool:
    if isinstance(a, bool) or not isinstance(a, int | float):
        return False
    if math.isinf(b) or math.isinf(a):
        return a == b
    return math.isclose(float(a), b, rel_tol=REL_TOL, abs_tol=1e-12)


def _label(i: int, rec: dict[str, Any]) -> str:
    kind = rec.get("kind", "round")
    if kind == "round":
        return f"audit.jsonl record {i} (round {rec.get('round')})"
    return f"audit.jsonl record {i} ({kind}{' before round ' + str(rec['round']) if 'round' in rec else ''})"


def check_epsilons(records: list[dict[str, Any]], delta: float) -> None:
    """Raise EvidenceError naming the first record whose epsilon is not the accountants'
    epsilon of the events the chain charged up to it."""
    charged: list[dict[str, Any]] = []
    for i, rec in enumerate(records, 1):
        try:
            apply_record(charged, rec)
        except (TypeError, ValueError) as exc:
            raise EvidenceError(f"{_label(i, rec)}: its events cannot be read ({exc})") from None
        stated = rec.get("epsilon")
        if stated is None:
            continue
        if not isinstance(stated, dict) or not charged:
            raise EvidenceError(f"{_label(i, rec)}: states epsilon {stated!r} but the chain has charged no privacy events")
        try:
            derived = _epsilons(charged, delta, stated)
        except (SecureFedError, TypeError, ValueError, KeyError) as exc:
            raise EvidenceError(f"{_label(i, rec)}: its ledger events cannot be re-derived ({exc})") from None
        for name, per in derived.items():
            entry = stated[name]
            want = max(per.values())
            got = entry.get("max") if isinstance(entry, dict) else entry
            if not _close(got, want):
                raise EvidenceError(f"{_label(i, rec)}: records {name} epsilon {got} but its ledger events give {want:.6g}")
            per_client = entry.get("per_client") if isinstance(entry, dict) else None
            if isinstance(per_client, dict):
                for subject, value in per_client.items():
                    if subject not in per or not _close(value, per[subject]):
                        raise EvidenceError(f"{_label(i, rec)}: records {name} epsilon {value} for client {subject} "
                                            f"but its ledger events give {per.get(subject, float('nan')):.6g}")


def config_hash_of_chain(records: list[dict[str, Any]]) -> str:
    """The SHA-256 of config.json the chain recorded last; EvidenceError when the chain
    does not start with a config record."""
    if not records or records[0].get("kind") != "config" or not isinstance(records[0].get("config_sha256"), str):
        raise EvidenceError("audit.jsonl record 1 is not the config record (the chain must start with the SHA-256 of config.json)")
    want = records[0]["config_sha256"]
    for rec in records[1:]:
        if isinstance(rec.get("config_sha256"), str):
            want = rec["config_sha256"]
    return str(want)


def check_config_hash(run_dir: Path, records: list[dict[str, Any]]) -> None:
    want = config_hash_of_chain(records)
    got = file_sha256(run_dir / "config.json")
    if got != want:
        raise EvidenceError(f"{run_dir / 'config.json'}: its SHA-256 {got[:16]}... is not the one the audit chain "
                            f"recorded ({want[:16]}...): config.json was edited or belongs to another run")


@dataclass(frozen=True)
class Evidence:
    records: list[dict[str, Any]]


def check_evidence(run_dir: Path, *, epsilons: bool = True) -> Evidence:
    """Verify the chain, the config hash and (``epsilons``) every recorded epsilon; raise
    AuditChainError or EvidenceError with a one-line reason naming the record."""
    path = run_dir / "audit.jsonl"
    if not path.is_file():
        raise EvidenceError(f"{path}: missing (is this a run folder?)")
    verify_chain(path)
    records = list(read_audit(path))
    check_config_hash(run_dir, records)
    if epsilons:
        from secure_fed.run.rundir import load_json

        raw = load_json(run_dir / "config.json")
        delta = raw.get("delta") if isinstance(raw, dict) else None
        if not isinstance(delta, int | float) or isinstance(delta, bool):
            raise EvidenceError(f"{run_dir / 'config.json'}: has no numeric delta")
        check_epsilons(records, float(delta))
    return Evidence(records)


__all__ = ["AuditChainError", "Evidence", "EvidenceError", "apply_record", "charged_events", "check_config_hash",
           "check_epsilons", "check_evidence", "config_hash_of_chain", "event_difference"]
