"""The one place that imports Ray, which is an optional extra (``pip install -e ".[ray]"``)."""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from secure_fed.errors import ConfigError


def import_ray() -> ModuleType:
    """Return the ``ray`` module, or raise a ConfigError saying what to install."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            '--executor ray needs Ray: install it with pip install -e ".[ray]" '
            '(or pip install "ray>=2.9")'
        ) from exc
    return ray


def ray_available() -> bool:
    """True when ``import ray`` would succeed (for skipping Ray tests where it is absent)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def start_ray(address: str | None = None, workers: int = 0, quiet: bool = True) -> tuple[ModuleType, bool]:
    """Connect to Ray, or start a local instance; returns (ray, True if this call started it,
    so the caller must shut it down).

    With ``address`` it joins that cluster. Otherwise a local instance gets this machine's
    CPUs, ``workers`` of them when given (never more than the machine has), no dashboard,
    no usage stats and no forwarded worker logs. An instance already running is reused.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR if quiet else logging.WARNING}
    if not address:
        cpus = os.cpu_count() or 1
        kwargs["num_cpus"] = min(workers, cpus) if workers else cpus
    ray.init(address=address or None, **kwargs)
    return ray, True
