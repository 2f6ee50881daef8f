"""Reading a finished run folder's JSON files for the audits (one message style for all)."""

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
