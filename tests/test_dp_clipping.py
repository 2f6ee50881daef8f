"""Closed-form per-class clipping against Opacus and torch.func; sensitivity property."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

import dp.clipping as clipping
from dp.clipping import clip_vector, per_class_clipped_sums, zero_sums
from dp.errors import ConfigError


class _Head(torch.nn.Module):
    """Linear head whose per-sample 'shift' gradient is dL/df_i (Opacus sees it as a param)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(w.shape[1], dtype=w.dtype))
        self.fc = torch.nn.Linear(w.shape[1], w.shape[0]).to(w.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f + self.shift)


def _opacus_per_class(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                      clip: float) -> dict[str, torch.Tensor]:
    """Opacus GradSampleModule + DPOptimizer flat clipping, one class batch at a time."""
    n_cls, dim = w.shape
    out = {"feature": torch.zeros(n_cls, dim, dtype=f.dtype),
           "weight": torch.zeros(n_cls, n_cls, dim, dtype=f.dtype),
           "bias": torch.zeros(n_cls, n_cls, dtype=f.dtype)}
    for c in range(n_cls):
        idx = (y == c).nonzero().flatten()
        if idx.numel() == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(_Head(w, b), loss_reduction="sum")
            opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                              max_grad_norm=clip, expected_batch_size=idx.numel(),
                              loss_reduction="sum")
            loss = torch.nn.functional.cross_entropy(gsm(f[idx]), y[idx], reduction="sum")
            loss.backward()
        opt.clip_and_accumulate()
        m = gsm._module
        out["feature"][c] = m.shift.summed_grad
        out["weight"][c] = m.fc.weight.summed_grad
        out["bias"][c] = m.fc.bias.summed_grad
    return out


def _data(seed: int, bsz: int, dim: int, n_cls: int, scale: float = 1.0
          ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(bsz, dim, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, n_cls, (bsz,), generator=g)
    w = torch.randn(n_cls, dim, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(n_cls, generator=g, dtype=torch.float64) * 0.1
    return f, y, w, b


@pytest.mark.parametrize("onehot", [True, False])
@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
def test_closed_form_equals_opacus_flat_clipping(
    clip: float, onehot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clipping, "_ONEHOT_FLOPS", 1e30 if onehot else 0.0)
    f, y, w, b = _data(1, 40, 12, 5, scale=2.0)
    ours = per_class_clipped_sums(f, y, w, b, clip)
    ref = _opacus_per_class(f, y, w, b, clip)
    for name in ("feature", "weight", "bias"):
        assert torch.allclose(getattr(ours, name), ref[name], rtol=0, atol=1e-6), name
    assert torch.all(ours.count == 0)


def _per_sample_oracle(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                       clip: float, c: float) -> torch.Tensor:
    """Per-sample gradients by torch.func, clipped with a count coordinate, summed per class."""
    def loss(fi: torch.Tensor, wi: torch.Tensor, bi: torch.Tensor, yi: torch.Tensor
             ) -> torch.Tensor:
        return torch.nn.functional.cross_entropy((fi @ wi.T + bi)[None], yi[None])

    gf, gw, gb = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)),
                                 in_dims=(0, None, None, 0))(f, w, b, y)
    n_cls = w.shape[0]
    flat = torch.cat([gf, gw.reshape(len(f), -1), gb, torch.full((len(f), 1), c,
                      dtype=f.dtype)], 1)
    factor = torch.clamp(clip / (flat.norm(dim=1) + 1e-6), max=1.0)
    flat = flat * factor[:, None]
    dim = f.shape[1]
    blocks = []
    for cls in range(n_cls):
        s = flat[y == cls].sum(0)
        blocks.append((s[:dim], s[dim:dim + n_cls * dim], s[-n_cls - 1:-1], s[-1:]))
    return torch.cat([torch.cat([blk[i].reshape(-1) for blk in blocks]) for i in range(4)])


def test_count_coordinate_is_clipped_jointly() -> None:
    f, y, w, b = _data(2, 30, 6, 4)
    ours = per_class_clipped_sums(f, y, w, b, 0.7, count_coordinate=0.5)
    ref = _per_sample_oracle(f, y, w, b, 0.7, 0.5)
    assert torch.allclose(ours.flat(), ref, atol=1e-9)
    assert ours.clipped == 30  # every sample is above 0.7 with the count coordinate
    assert torch.all(ours.count <= 0.5 * torch.bincount(y, minlength=4))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), bsz=st.integers(2, 25), clip=st.floats(0.01, 50.0),
       drop=st.integers(0, 24), count=st.sampled_from([None, 0.3, 2.0]),
       onehot=st.booleans())
def test_one_sample_moves_the_release_by_at_most_clip(
    seed: int, bsz: int, clip: float, drop: int, count: float | None, onehot: bool
) -> None:
    old = clipping._ONEHOT_FLOPS
    clipping._ONEHOT_FLOPS = 1e30 if onehot else 0.0
    try:
        f, y, w, b = _data(seed, bsz, 7, 6, scale=3.0)
        i = drop % bsz
        keep = torch.arange(bsz) != i
        full = per_class_clipped_sums(f, y, w, b, clip, count).flat()
        removed = per_class_clipped_sums(f[keep], y[keep], w, b, clip, count).flat()
        assert float((full - removed).norm()) <= clip * (1 + 1e-9)
        f2, y2 = f.clone(), y.clone()
        f2[i] = -5 * f2[i]
        y2[i] = (y2[i] + 1) % 6
        replaced = per_class_clipped_sums(f2, y2, w, b, clip, count).flat()
        assert float((full - replaced).norm()) <= 2 * clip * (1 + 1e-9)
    finally:
        clipping._ONEHOT_FLOPS = old


def test_shapes_and_bad_inputs() -> None:
    f, y, w, b = _data(3, 10, 5, 3)
    s = per_class_clipped_sums(f.float(), y, w.float(), b.float(), 1.0, 1.0)
    assert s.feature.shape == (3, 5) and s.weight.shape == (3, 3, 5)
    assert s.bias.shape == (3, 3) and s.count.shape == (3,)
    assert s.flat().numel() == 3 * 5 + 3 * 3 * 5 + 9 + 3 and s.flat().dtype == torch.float32
    with pytest.raises(ConfigError):
        per_class_clipped_sums(f, y, w[:, :4], b, 1.0)
    with pytest.raises(ConfigError):
        per_class_clipped_sums(f, y, w, b, 0.0)


def test_clip_vector_client_unit() -> None:
    v = np.arange(10.0)
    c, was = clip_vector(v, 2.0)
    assert was and np.linalg.norm(c) <= 2.0 and np.allclose(c / np.linalg.norm(c),
                                                            v / np.linalg.norm(v))
    c2, was2 = clip_vector(v, 100.0)
    assert not was2 and np.allclose(c2, v)
    t, wt = clip_vector(torch.ones(9), 1.5)
    assert wt and isinstance(t, torch.Tensor) and float(t.norm()) <= 1.5
    with pytest.raises(ConfigError):
        clip_vector(v, -1.0)


@pytest.mark.parametrize("onehot", [True, False])
def test_class_batches_add_up_to_the_union(onehot: bool, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Adding class-c batches one by one into one release equals one call on their union,
    and a batch never writes the blocks of classes it does not contain."""
    monkeypatch.setattr(clipping, "_ONEHOT_FLOPS", 1e30 if onehot else 0.0)
    f, y, w, b = _data(4, 60, 8, 20)
    union = per_class_clipped_sums(f, y, w, b, 0.5, 1.0)
    into = zero_sums(20, 8, dtype=f.dtype)
    marker = torch.full((8,), 7.0, dtype=f.dtype)
    absent = [c for c in range(20) if not bool((y == c).any())]
    assert absent, "the data must leave some class empty for this test"
    into.weight[absent] = 3.0
    into.feature[absent] = marker
    ptr = into.weight.data_ptr()
    for c in torch.unique(y).tolist():
        into = per_class_clipped_sums(f[y == c], y[y == c], w, b, 0.5, 1.0, into=into)
    assert into.weight.data_ptr() == ptr
    assert torch.all(into.weight[absent] == 3.0) and torch.all(into.feature[absent] == marker)
    into.weight[absent] = 0.0
    into.feature[absent] = 0.0
    assert torch.allclose(into.flat(), union.flat(), rtol=0, atol=1e-12)
    assert into.clipped == union.clipped > 0
    mixed = per_class_clipped_sums(f[30:], y[30:], w, b, 0.5, 1.0,
                                   into=per_class_clipped_sums(f[:30], y[:30], w, b, 0.5, 1.0))
    assert torch.allclose(mixed.flat(), union.flat(), rtol=0, atol=1e-12)
    empty = per_class_clipped_sums(f[:0], y[:0], w, b, 0.5, 1.0)  # an empty Poisson draw
    assert empty.clipped == 0 and not torch.any(empty.flat())
    assert torch.equal(per_class_clipped_sums(f[:0], y[:0], w, b, 0.5, 1.0, into=mixed).flat(),
                       mixed.flat())
    with pytest.raises(ConfigError, match="into has shapes"):
        per_class_clipped_sums(f[:, :4], y, w[:, :4], b, 0.5, into=union)
