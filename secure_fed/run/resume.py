"""Resuming a run folder: load its checkpoint, check its evidence, and append what the
resume changes to the audit chain (never rewrite it).

A resume appends one ``resume`` record: the rounds recorded after the checkpoint (re-run
now; their new records say ``rerun``), the hardened releases recovered from the ledger
journal, the ledger events it charges and uncharges relative to the events the chain has
charged so far (:func:`secure_fed.run.evidence.charged_events`), and the epsilon after it;
``--rounds N`` above the saved total extends the run, with config.json's new hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dp.events import event_to_dict
from dp.ledger import PrivacyLedger
from secure_fed.errors import ConfigError
from secure_fed.run.evidence import charged_events, check_config_hash, event_difference
from secure_fed.run.rundir import file_sha256, load_json, load_torch, verify_chain, write_json

Trainer = Any
"""The :class:`secure_fed.run.trainer.Trainer` being resumed (not imported: the trainer imports this module)."""


def resume(trainer: Trainer, run_dir: Path) -> None:
    """Continue a run after its last complete (checkpointed) round.

    With a run folder to write (``trainer.audit``), the chain must verify and config.json
    must be the one it records; the resume is then appended as a ``resume`` record: the
    rounds recorded after the checkpoint (re-run now; their new records say ``rerun``),
    the hardened releases recovered from the journal, the ledger events it charges and
    uncharges against the chain, and the epsilon after it. A larger ``rounds`` in this
    trainer's config than in config.json extends the run (refused if the target epsilon
    would be crossed); config.json is rewritten and its new hash is in the record.
    """
    path = run_dir / "checkpoint.pt"
    state = load_torch(path, map_location=trainer.device)
    try:
        last = int(state["round"])
        trainer.server.load_state_dict(state["server"])
        gen = getattr(trainer.server, "generator", None)
        if gen is not None and state["server_generator"] is not None:
            gen.set_state(state["server_generator"])
        trainer.history = list(state["history"])
        trainer.ledger = PrivacyLedger.from_json(state["ledger"])
        trainer.stopped = state.get("stopped")
        noise = float(state["noise_multiplier"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: not a checkpoint of this run's configuration ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if trainer.audit is not None:
        verify_chain(trainer.audit.path)
        check_config_hash(run_dir, trainer.audit.records)
    trainer.set_noise(noise)
    trainer.recover_interrupted_releases(run_dir, last)
    trainer.start_round = last + 1
    if trainer.audit is None:
        return
    orphans = _records_after(trainer, last)
    trainer.rerun_rounds = {int(r["round"]) for r in orphans}
    record: dict[str, Any] = {"kind": "resume", "from_round": last, "rerun_rounds": sorted(trainer.rerun_rounds),
                              "recovered_releases": list(trainer.interrupted_releases)}
    saved = load_json(run_dir / "config.json")
    if isinstance(saved, dict) and saved.get("rounds") != trainer.cfg.rounds:
        record["extended_rounds"] = {"from": saved.get("rounds"), "to": trainer.cfg.rounds}
        _check_extension(trainer, last, saved)
        write_json(run_dir / "config.json", {**saved, "rounds": trainer.cfg.rounds})
        record["config_sha256"] = file_sha256(run_dir / "config.json")
    chain = charged_events(trainer.audit.records)
    mine = [event_to_dict(e) for e in trainer.ledger.events]
    record["charged"] = event_difference(mine, chain)
    record["uncharged"] = event_difference(chain, mine)
    record["epsilon"] = trainer.epsilons()
    trainer.audit.append(record)
    if trainer.interrupted_releases:
        trainer.log(f"resume: charged the release(s) of round(s) {trainer.interrupted_releases} interrupted before "
                 "their checkpoint (hardened noise is not drawn again); recorded in audit.jsonl")


def _records_after(trainer: Trainer, last: int) -> list[dict[str, Any]]:
    """Round records written after the checkpoint of round ``last`` (since the last resume)."""
    assert trainer.audit is not None
    out: list[dict[str, Any]] = []
    for rec in trainer.audit.records:
        if rec.get("kind") == "resume":
            out = []
        elif rec.get("kind", "round") == "round" and int(rec.get("round", 0)) > last:
            out.append(rec)
    return out


def _check_extension(trainer: Trainer, last: int, saved: dict[str, Any]) -> None:
    """``--resume --rounds N``: refuse a shrink, a budget-stopped run, or rounds that the
    target epsilon cannot pay for (worst case: every round runs with its full cohort)."""
    old = saved.get("rounds")
    if isinstance(old, int) and trainer.cfg.rounds < old:
        raise ConfigError(f"--rounds: {trainer.cfg.rounds} is fewer than the run's {old} rounds (--rounds on resume is the new total)")
    if trainer.stopped is not None:
        raise ConfigError(f"--rounds: the run stopped at its budget ({trainer.stopped['reason']}); it cannot be extended")
    if trainer.privacy is None or trainer.cfg.target_epsilon is None:
        return
    planned = [e for r in range(last + 1, trainer.cfg.rounds + 1) for e in trainer._planned_events(r, trainer.cohort(r))]
    if trainer.ledger.would_exceed(planned, trainer.cfg.target_epsilon, trainer.cfg.delta, trainer.cfg.accountant):
        spent = trainer.epsilons()
        now = f"{spent[trainer.cfg.accountant]['max']:.4g}" if spent else "0"
        raise ConfigError(f"--rounds: {trainer.cfg.rounds} rounds at noise multiplier {trainer.noise_multiplier:.4f} would exceed "
                          f"--target-epsilon {trainer.cfg.target_epsilon} (spent so far {now} after round {last}); "
                          "choose fewer rounds")


def record_restart(trainer: Trainer) -> None:
    """A fresh start that charged releases made before the first checkpoint (a hardened run
    killed in round 1): one ``resume`` record after the config record says so."""
    assert trainer.audit is not None
    trainer.audit.append({"kind": "resume", "from_round": 0, "rerun_rounds": [],
                       "recovered_releases": list(trainer.interrupted_releases),
                       "charged": [event_to_dict(e) for e in trainer.ledger.events], "uncharged": [],
                       "epsilon": trainer.epsilons()})


__all__ = ["record_restart", "resume"]
