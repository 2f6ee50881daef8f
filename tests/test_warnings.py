"""Library warnings that do not apply to this project are silenced where they arise, and only
those: DP-SGD draws its sampling and noise from a keystream CSPRNG, so Opacus's warning that
its secure RNG is off says nothing about our training; every other warning still escapes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import opacus.privacy_engine
import pytest
import torch

from crypto.rng import KeystreamRNG
from dp.dpsgd import private_local_training
from secure_fed.config import TrainConfig
from secure_fed.run.trainer import Trainer

SECURE_RNG = ("Secure RNG turned off. This is perfectly fine for experimentation as it allows for much "
              "faster training performance, but remember to turn it on and retrain one last time before "
              "production with ``secure_mode`` turned on.")
"""Opacus's warning, word for word, as its PrivacyEngine raises it with secure_mode=False."""


def _ce(m: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(m(xb), yb)


def _smallest_dp_training(loss_fn: Any = _ce) -> None:
    """One DP-SGD step on 16 samples (Poisson rate 1): one PrivacyEngine, its sampler and noise."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2))
    private_local_training(model, loss_fn, x, y, epochs=1, batch_size=16, lr=0.1, noise_multiplier=1.0,
                           max_grad_norm=1.0, rng=KeystreamRNG.from_seed(1))


def _opacus_engine_warning(message: str) -> None:
    """``message`` as a UserWarning raised from Opacus's privacy_engine module."""
    warnings.warn_explicit(message, UserWarning, opacus.privacy_engine.__file__, 1,
                           module="opacus.privacy_engine")


def _messages(recwarn: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in recwarn]


def test_the_smallest_dp_training_lets_no_warning_escape(recwarn: pytest.WarningsRecorder) -> None:
    filters = list(warnings.filters)
    _smallest_dp_training()
    assert _messages(recwarn) == []
    assert warnings.filters == filters  # the filter lives only around the engine's construction


def test_a_one_round_dp_training_run_lets_no_warning_escape(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    """The same through the trainer: sample-level DP-SGD, the DP release and SecAgg+ (the
    noise is given, so no noise is planned)."""
    cfg = TrainConfig(clients=3, cohort=3, rounds=1, rounds_of_hp=1, meta_steps=1, meta_per_class=2, dp="sample",
                      target_epsilon=None, noise_multiplier=1.0, dropout=0.0, out=str(tmp_path), run_id="r", seed=1)
    Trainer(cfg, progress=False, log=lambda s: None).run()
    assert _messages(recwarn) == []


def test_unrelated_warnings_still_escape(recwarn: pytest.WarningsRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    make_accountant = opacus.privacy_engine.create_accountant

    def create_accountant(*args: Any, **kwargs: Any) -> Any:
        # runs inside the engine's constructor, where the secure-RNG warning is filtered
        _opacus_engine_warning("another warning from Opacus's PrivacyEngine")
        return make_accountant(*args, **kwargs)

    def loss(m: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        warnings.warn("unrelated warning during training", UserWarning, stacklevel=1)
        warnings.warn(SECURE_RNG, UserWarning, stacklevel=1)  # the same words from another module
        return _ce(m, xb, yb)

    monkeypatch.setattr(opacus.privacy_engine, "create_accountant", create_accountant)
    _smallest_dp_training(loss)
    _opacus_engine_warning(SECURE_RNG)  # after the engine is built: no filter left behind
    seen = _messages(recwarn)
    assert "another warning from Opacus's PrivacyEngine" in seen
    assert "unrelated warning during training" in seen
    assert seen.count(SECURE_RNG) == 1 + seen.count("unrelated warning during training")
    assert seen[-1] == SECURE_RNG


def test_the_warning_is_opacus_own(recwarn: pytest.WarningsRecorder) -> None:
    """Opacus still raises it (so the filter has something to match): a stock engine warns."""
    opacus.privacy_engine.PrivacyEngine(accountant="rdp", secure_mode=False)
    [w] = list(recwarn)
    assert str(w.message) == SECURE_RNG and w.category is UserWarning
    assert w.filename == opacus.privacy_engine.__file__
