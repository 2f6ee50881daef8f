"""The one place that imports Ray, which is an optional extra (``pip install -e ".[ray]"``)."""

from __future__ import annotations

from types import ModuleType

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
