"""Device selection and placement: the one place that moves torch objects between devices.

Runs on both sides (client local training, server hyper-prototype matching). The crypto and
protocol layers never see a torch tensor: they get CPU ``bytes`` and numpy integer arrays,
so everything GPU-related stays in this module and in the code that calls it.

``--device`` accepts ``auto`` (CUDA device 0 when available, else the CPU), ``cpu``,
``cuda`` and ``cuda:N``. Asking for CUDA where there is none, or for an index that does not
exist, is a :class:`~secure_fed.errors.ConfigError` that names ``--device``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from secure_fed.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

T = TypeVar("T")

# Leaves that ride along inside batches/containers and have no device.
_PASSTHROUGH = (bool, int, float, complex, str, bytes, type(None))


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`, checking it exists here.

    ``auto`` picks ``cuda:0`` when CUDA is available and the CPU otherwise.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"--device must be a string, one of {DEVICE_CHOICES}; got {spec!r}")
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        return _resolve_cuda(text)
    raise ConfigError(f"--device {spec!r} is not understood; use one of {DEVICE_CHOICES}")


def _resolve_cuda(text: str) -> torch.device:
    """Validate ``cuda`` / ``cuda:N`` against the CUDA devices actually present."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {text} asks for CUDA, but no CUDA device is available on this machine "
            "(or this torch build has no CUDA support); use --device cpu or --device auto"
        )
    if text == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    index_text = text.split(":", 1)[1]
    if not index_text.isdigit():
        raise ConfigError(f"--device {text}: the CUDA index must be a non-negative integer")
    index = int(index_text)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {text}: there are {count} CUDA device(s), valid indices are 0..{count - 1}"
        )
    return torch.device("cuda", index)


def to_device(obj: T, device: torch.device | str, non_blocking: bool = False) -> T:
    """Move ``obj`` to ``device`` and return it.

    Accepts a tensor, an ``nn.Module`` (moved in place, as ``Module.to`` does, and returned),
    or a tuple / list / dict (any mapping) of these, recursively; containers are rebuilt with
    the same type (named tuples and dict subclasses included;
    other mappings come back as a ``dict``). Plain Python scalars, strings and ``None`` pass
    through unchanged. Anything else (e.g. a numpy array) is a ``TypeError``: numpy arrays
    belong to the crypto/protocol side and stay on the CPU.
    """
    target = torch.device(device) if isinstance(device, str) else device
    return _move(obj, target, non_blocking)


def _move(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    """Recursive worker for :func:`to_device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, nn.Module):
        return obj.to(device)
    if isinstance(obj, _PASSTHROUGH):
        return obj
    if isinstance(obj, tuple):
        items = [_move(item, device, non_blocking) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, list):
        return [_move(item, device, non_blocking) for item in obj]
    if isinstance(obj, dict):
        moved = copy.copy(obj)  # keeps dict subclasses (OrderedDict, defaultdict) intact
        for key, value in obj.items():
            moved[key] = _move(value, device, non_blocking)
        return moved
    if isinstance(obj, Mapping):
        return {key: _move(value, device, non_blocking) for key, value in obj.items()}
    raise TypeError(
        f"to_device: cannot move an object of type {type(obj).__name__}; expected a tensor, "
        "an nn.Module, or a tuple/list/dict of them"
    )


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU thread count (``--threads``); return the count in effect.

    ``None`` leaves torch's default. Small models (SmallCNN on 8 x 8 digits) do too little
    work per operation to amortize thread synchronization, so 1 thread is usually fastest
    for them; see ``benchmarks/RESULTS.md``.
    """
    if num_threads is not None:
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ConfigError(f"--threads must be a positive integer, got {num_threads!r}")
        torch.set_num_threads(num_threads)
    return int(torch.get_num_threads())
