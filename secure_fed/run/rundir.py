"""Every file of a run folder: where it goes, crash-safe writes, the hash-chained audit log,
the ledger journal, and the readers the audits and the report share.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a
killed process leaves either the old or the new version, never half a file. The audit log
is an append-only JSON-lines file whose records form a hash chain: each carries the SHA-256
of the previous record's canonical bytes, so an edited or deleted record is detectable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError, SecureFedError

GENESIS = "0" * 64


class AuditChainError(SecureFedError):
    """The audit log's hash chain is broken; the message names the first bad record."""


def make_run_dir(out: str, run_id: str | None, algorithm: str, seed: int) -> Path:
    """Create ``out/<run-id>/`` (a fresh id from time, algorithm and seed when not given)."""
    base = Path(out)
    if run_id is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{algorithm}-s{seed}"
        candidate, k = base / run_id, 1
        while candidate.exists():
            k += 1
            candidate = base / f"{run_id}-{k}"
    else:
        candidate = base / run_id
        if candidate.exists() and any(candidate.iterdir()):
            raise ConfigError(f"--run-id: {candidate} already exists and is not empty (use --resume to continue it)")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through the same atomic write (torch is imported only here, so the
    report and budget commands start without it)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def record_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


class AuditLog:
    """Append-only ``audit.jsonl`` with a hash chain (``prev`` = digest of the previous record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = GENESIS
        if path.exists():
            for rec in read_audit(path):
                self.last = record_digest(rec)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        rec = dict(record)
        rec["prev"] = self.last
        line = canonical(rec) + b"\n"
        with open(self.path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.last = record_digest(rec)
        return rec

    def truncate_to_rounds(self, rounds: int) -> None:
        """Keep only records of rounds <= ``rounds`` (used by resume after a crash)."""
        if not self.path.exists():
            return
        keep = [r for r in read_audit(self.path) if int(r.get("round", 0)) <= rounds]
        atomic_write_bytes(self.path, b"".join(canonical(r) + b"\n" for r in keep))
        self.last = record_digest(keep[-1]) if keep else GENESIS


JOURNAL = "ledger_journal.jsonl"
"""Privacy events, appended (and fsynced) when a round's sum is released, before its checkpoint."""


def append_journal(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "ab") as fh:
        fh.write(canonical(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Journal entries; a torn last line (killed mid-write) is ignored: that release was not complete."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditChainError(f"{path.name}: record {i} is not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise AuditChainError(f"{path.name}: record {i} is not a JSON object")
            yield rec


def verify_chain(path: Path) -> int:
    """Check the hash chain; returns the number of records or raises :class:`AuditChainError`."""
    prev = GENESIS
    n = 0
    for n, rec in enumerate(read_audit(path), 1):
        if rec.get("prev") != prev:
            raise AuditChainError(
                f"{path.name}: record {n} (round {rec.get('round')}) does not chain to record {n - 1}: "
                f"record {n - 1} was altered, or records were removed or inserted before record {n}"
            )
        prev = record_digest(rec)
    return n


# -- reading a finished run folder (audits, report) -----------------------------------------
def load_json(path: Path) -> Any:
    """The JSON document at ``path``; a ConfigError naming the file if missing or invalid."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"RUN_DIR: {path.name} is missing in {path.parent}; audit a finished run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RUN_DIR: {path.name} is not valid JSON ({exc})") from None


def load_config(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's configuration and the raw ``config.json`` (with the values the trainer
    recorded, such as the noise multiplier it used); ConfigError when it is not a run."""
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a directory")
    raw = load_json(run_dir / "config.json")
    if not isinstance(raw, dict):
        raise ConfigError(f"RUN_DIR: config.json in {run_dir} must hold a JSON object")
    return TrainConfig.from_dict(raw), raw


RESULTS_NAME = "audit_results.json"


def read_audit_results(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(results, None) for a readable ``audit_results.json``; (None, why) for an unreadable
    one; (None, None) when there is none."""
    if not path.is_file():
        return None, None
    try:
        obj = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        return None, f"{path.name} is not valid JSON ({type(exc).__name__})"
    if not isinstance(obj, dict) or not isinstance(obj.get("audits"), dict):
        return None, f"{path.name} does not hold an object with an 'audits' object"
    return obj, None
