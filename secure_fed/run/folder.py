"""Reading a finished run folder's JSON files for the audits (one message style for all),
and the one reader of ``audit_results.json`` (the audit runner and the report share it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError


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
