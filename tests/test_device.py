"""Device resolution and placement (secure_fed/device.py)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from secure_fed.device import resolve_device, to_device
from secure_fed.errors import ConfigError

HAS_CUDA = torch.cuda.is_available()
Pair = namedtuple("Pair", ["x", "y"])


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA fallback")
def test_auto_is_cpu_without_cuda() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_cpu_spec_case_and_spaces() -> None:
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA error")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_absent_is_config_error_naming_flag(spec: str) -> None:
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "tpu", "", "cuda0", "mps:0"])
def test_unknown_spec_rejected(spec: str) -> None:
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(spec)


def test_cuda_bad_index_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two CUDA devices exist: cuda:1 resolves, cuda:2 and cuda:x do not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2.*0\.\.1"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("cuda:x")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("cuda:-1")


def test_auto_prefers_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_to_device_nested_containers_keep_types() -> None:
    cpu = torch.device("cpu")
    t = torch.arange(3.0)
    batch = {"x": t, "meta": [1, "a", None, (t, t)], "pair": Pair(t, 2.5)}
    out = to_device(batch, cpu)
    assert type(out) is dict and isinstance(out["pair"], Pair)
    assert isinstance(out["meta"], list) and isinstance(out["meta"][3], tuple)
    assert out["meta"][:3] == [1, "a", None]
    assert torch.equal(out["x"], t) and out["pair"].y == 2.5
    od = to_device(OrderedDict(a=t), "cpu")
    assert isinstance(od, OrderedDict) and torch.equal(od["a"], t)


def test_to_device_dtype_and_module_preserved() -> None:
    model = nn.Linear(3, 2)
    moved = to_device(model, torch.device("cpu"))
    assert moved is model  # Module.to moves in place and returns the module
    x = torch.ones(2, dtype=torch.float64)
    assert to_device(x, "cpu").dtype == torch.float64


def test_to_device_refuses_numpy() -> None:
    with pytest.raises(TypeError, match="ndarray"):
        to_device({"a": np.zeros(3)}, "cpu")


def test_to_device_meta_device_moves_every_leaf() -> None:
    """The 'meta' device exists everywhere: proves leaves really move, not just pass."""
    meta = torch.device("meta")
    model = nn.Linear(3, 2)
    out = to_device((torch.zeros(2), [torch.ones(1)], {"m": model}), meta)
    assert out[0].device.type == "meta" and out[1][0].device.type == "meta"
    assert all(p.device.type == "meta" for p in out[2]["m"].parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_roundtrip() -> None:
    dev = resolve_device("cuda")
    assert dev.type == "cuda"
    assert resolve_device("auto").type == "cuda"
    model = to_device(nn.Linear(4, 2), dev)
    x = to_device({"x": torch.randn(3, 4)}, dev)["x"]
    assert model(x).device.type == "cuda"
    back = to_device(model(x), torch.device("cpu"))
    assert back.device.type == "cpu"
