"""Every file of a run folder: where it goes, crash-safe writes, the hash-chained audit log,
the ledger journal, and the readers the audits and the report share.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a
killed process leaves either the old or the new version, never half a file. The audit log
is an append-only JSON-lines file whose records form a hash chain: each carries the SHA-256
of the previous record's canonical bytes, so an edited or deleted record is detectable. Its
first record (kind ``config``) holds the SHA-256 of ``config.json``; every later event that
changes privacy (a resume, a release recovered from the journal, a budget stop) is a record
appended after it: the log is never truncated or rewritten.

One process writes a run folder at a time: :class:`RunLock` holds an OS lock
(``fcntl.flock``) on ``.lock`` in the folder while a trainer writes there.
"""

from __future__ import annotations

import errno
import fcntl
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


LOCK_NAME = ".lock"


class AuditChainError(SecureFedError):
    """The audit log's hash chain is broken; the message names the first bad record."""


class RunFolderError(SecureFedError):
    """A file of a run folder could not be read or written; the message names the file."""


class RunLocked(SecureFedError):
    """Another process is writing the run folder."""


def os_error(path: Path, exc: OSError, doing: str) -> RunFolderError:
    """A one-line RunFolderError naming ``path`` and the OS's reason."""
    why = exc.strerror or str(exc) or type(exc).__name__
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = "; free space on that file system, then --resume the run"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a writable --out"
    return RunFolderError(f"{path}: cannot {doing} ({why}){hint}")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock``, held until :meth:`release`
    (or the process ends: the OS drops the lock with the file descriptor)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise os_error(self.path, exc, "create the run folder's lock file") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{run_dir}: another process is writing this run folder "
                                "(wait for it to finish, or use another --run-id)") from None
            raise os_error(self.path, exc, "lock the run folder") from exc

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a plain folder name (no separators, not empty, not . or ..)."""
    if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id or "\0" in run_id or run_id != run_id.strip():
        raise ConfigError(f"--run-id: must be a plain folder name (no path separators, not empty, not . or ..; got {run_id!r})")
    return run_id


def make_run_dir(out: str, run_id: str | None, algorithm: str, seed: int) -> tuple[Path, RunLock]:
    """Create ``out/<run-id>/`` (a fresh id from time, algorithm and seed when not given) and
    lock it for this process; RunLocked when another process holds it."""
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise ConfigError(f"--out: {base} is a file, not a folder")
    if run_id is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{algorithm}-s{seed}"
        candidate, k = base / run_id, 1
        while candidate.exists():
            k += 1
            candidate = base / f"{run_id}-{k}"
    else:
        candidate = base / check_run_id(run_id)
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(candidate, exc, "create the run folder") from exc
    lock = RunLock(candidate)
    if any(p.name != LOCK_NAME for p in candidate.iterdir()):
        lock.release()
        raise ConfigError(f"--run-id: {candidate} already exists and is not empty (use --resume to continue it)")
    return candidate, lock


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise os_error(path, exc, "read") from exc


def _write_fully(fh: Any, data: bytes) -> None:
    """Write ``data`` and fsync it (the one place bytes of a run folder reach the disk)."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def environment(device: Any) -> dict[str, str]:
    """Versions that determine a run's numbers (written into config.json)."""
    import platform

    import cryptography
    import numpy as np
    import opacus
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "opacus": opacus.__version__, "numpy": np.__version__,
        "cryptography": cryptography.__version__, "device": str(device),
    }


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` atomically; a RunFolderError naming it when the OS refuses."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise os_error(path, exc, "write") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_fully(fh, data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise os_error(path, exc, "write") from exc
        raise


def append_line(path: Path, line: bytes) -> None:
    """Append one line and fsync it; a RunFolderError naming ``path`` when the OS refuses."""
    try:
        with open(path, "ab") as fh:
            _write_fully(fh, line)
    except OSError as exc:
        raise os_error(path, exc, "append to") from exc


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through the same atomic write (torch is imported only here, so the
    report and budget commands start without it)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: Path, *, map_location: Any = "cpu", weights_only: bool = False) -> Any:
    """``torch.load`` of a run folder's file; a RunFolderError naming it when it is missing,
    empty, truncated or not a torch file."""
    import torch

    try:
        if path.stat().st_size == 0:
            raise RunFolderError(f"{path}: the file is empty (was the run killed while writing it?)")
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except RunFolderError:
        raise
    except OSError as exc:
        raise os_error(path, exc, "read") from exc
    except Exception as exc:  # noqa: BLE001
        # Any exception out of unpickling damaged bytes means "corrupt": random bytes raise
        # UnpicklingError most often, but also ValueError, UnicodeDecodeError, OverflowError,
        # MemoryError (a huge declared length), RuntimeError and TypeError; a list of types
        # here missed OverflowError and MemoryError and let a traceback through.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(f"{path}: not a readable torch file, truncated or corrupt ({first[:160]})") from exc


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def record_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


class AuditLog:
    """Append-only ``audit.jsonl`` with a hash chain (``prev`` = digest of the previous record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = GENESIS
        self.records: list[dict[str, Any]] = []
        if path.exists():
            self.records = list(read_audit(path))
            if self.records:
                self.last = record_digest(self.records[-1])

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        rec = dict(record)
        rec["prev"] = self.last
        append_line(self.path, canonical(rec) + b"\n")
        self.last = record_digest(rec)
        self.records.append(rec)
        return rec


JOURNAL = "ledger_journal.jsonl"
"""Privacy events, appended (and fsynced) when a round's sum is released, before its checkpoint."""


def append_journal(path: Path, entry: dict[str, Any]) -> None:
    append_line(path, canonical(entry) + b"\n")


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Journal entries; a torn last line (killed mid-write) is ignored: that release was not complete."""
    out = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise os_error(path, exc, "read") from exc
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return [e for e in out if isinstance(e, dict) and isinstance(e.get("round"), int) and isinstance(e.get("events"), list)]


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise os_error(path, exc, "read") from exc
    with fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditChainError(f"{path.name}: record {i} is not valid JSON ({exc.msg})") from None
            except UnicodeDecodeError:
                raise AuditChainError(f"{path.name}: record {i} is not UTF-8 text (a binary or corrupted file)") from None
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
