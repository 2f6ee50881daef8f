"""Reading a finished run folder's JSON files for the audits (one message style for all)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secure_fed.errors import ConfigError


def load_json(path: Path) -> Any:
    """The JSON document at ``path``; a ConfigError naming the file if missing or invalid."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"RUN_DIR: {path.name} is missing in {path.parent}; audit a finished run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RUN_DIR: {path.name} is not valid JSON ({exc})") from None
