"""``run_secure.py budget``: epsilon for a plan, or the noise for a target epsilon.

Three forms (chosen by the flags given):

(a) ``--noise-multiplier Z --sample-rate Q --steps T``: epsilon of T Poisson(Q)-subsampled
    Gaussian steps at ``--delta``, by ``--accountant``.
(b) ``--target-epsilon E --sample-rate Q --steps T``: the smallest noise multiplier that
    keeps epsilon <= E.
(c) ``--rounds R`` with the ``train`` plan flags (``--clients --cohort --local-epochs
    --batch-size --samples-per-client --release-rate --release-noise-ratio``) and either
    ``--noise-multiplier`` or ``--target-epsilon``: epsilon after every round for one client
    of that plan (the noise multiplier is DP-SGD's; the release's is that times the ratio).

(d) ``--from-run RUN_DIR``: the plan of that run's ``train``, reproduced from its folder
    (``config.json``, ``layout.json``, ``partition.json``) through the object the trainer
    plans with (:class:`secure_fed.privacy.noise.RunPrivacy`): the same mechanism (the
    discrete Gaussian at the codec's gamma by default), unit, shares and per-client sample
    counts; prints the noise multiplier, the planned epsilon and the worst client's sample
    count. ``--train FLAG...`` (last on the line) plans the run ``train FLAG...`` would
    start, the same way (it loads the data set and builds the model to learn the upload's
    layout and the partition's sample counts; nothing is trained or written). Forms (a)-(c)
    plan float Gaussian events of sample-level privacy only.

With ``--accountant prv`` the PRV accountant is run and its answer checked: if it raises
or returns anything but a finite epsilon >= 0 (noise 0.6, rate 1, 1000 steps returns
inf), the output starts with one line saying that PRV failed for this plan and why, and
the RDP result follows, labelled ``rdp``. Forms (a) and (b) print one line; form (c) a
table of the plan (in train's terms) and one of epsilon after each round. ``--json``
prints one machine-readable object instead (``accountant`` is the one used, ``note`` the
failure, else null). Errors: exit status 2 and one line on stderr, prefixed as argparse's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dp.errors import SecureFedError
from dp.events import Event, GaussianEvent, event_to_dict
from secure_fed.config import DEFAULT_RELEASE_NOISE_RATIO, default_release_ratio

if TYPE_CHECKING:
    from dp.planning import RunPlan

# dp.accountants and dp.planning load Opacus (and with it torch): they are imported where a
# budget is computed, so that building the parser of any subcommand stays light.


ERROR_PREFIX = "run_secure.py budget: error: "
"""What every ``budget`` error line starts with (argparse's own errors read the same)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``budget`` flags on ``parser``."""
    g = parser.add_argument_group("mechanism (forms a, b)")
    g.add_argument("--noise-multiplier", type=float, help="noise std / L2 sensitivity")
    g.add_argument("--sample-rate", type=float, help="Poisson sampling rate q in (0, 1]")
    g.add_argument("--steps", type=int, help="number of subsampled Gaussian steps")
    g.add_argument("--target-epsilon", type=float, help="print the noise for this epsilon")
    g.add_argument("--delta", type=float, default=1e-5, help="target delta (default 1e-5)")
    g.add_argument("--accountant", choices=("rdp", "prv"), default="rdp",
                   help="rdp (Opacus orders) or prv (Opacus PRV; where it fails, says why and reports rdp)")
    p = parser.add_argument_group("run plan (form c; same meaning as in train)")
    p.add_argument("--rounds", type=int, help="training rounds (selects form c)")
    p.add_argument("--clients", type=int, default=10, help="clients in the federation")
    p.add_argument("--cohort", type=int, default=None, help="clients per round (default all)")
    p.add_argument("--local-epochs", type=int, default=1, help="DP-SGD epochs per round")
    p.add_argument("--batch-size", type=int, default=32, help="expected DP-SGD batch size")
    p.add_argument("--samples-per-client", type=int, default=None,
                   help="n_k of the accounted client (needed for DP-SGD steps)")
    p.add_argument("--release-rate", type=float, default=None,
                   help="Poisson rate of the per-class gradient release (omit: none)")
    p.add_argument("--release-noise-ratio", type=float, default=None,
                   help="the release's noise multiplier over DP-SGD's (the printed noise multiplier is DP-SGD's); "
                        f"default as in train: {DEFAULT_RELEASE_NOISE_RATIO:g} for a plan with both a release and "
                        "DP-SGD steps, else 1")
    p.add_argument("--participation", choices=("worst", "expected"), default="worst",
                   help="client in every round (worst) or in ceil(rounds*cohort/clients)")
    parser.add_argument("--from-run", metavar="RUN_DIR", default=None,
                        help="reproduce the plan of the train run in RUN_DIR exactly (form d)")
    parser.add_argument("--train", nargs=argparse.REMAINDER, metavar="TRAIN_FLAG", default=None,
                        help="the rest of the line are train's flags: plan that run exactly (form d, without a run folder)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _gaussian_events(z: float, q: float, steps: int) -> list[Event]:
    return [GaussianEvent(z, q, steps, "none" if q >= 1.0 else "poisson")]


def _epsilon(events: list[Event], delta: float, accountant: str) -> dict[str, Any]:
    from dp.accountants import epsilon_with_fallback

    eps, used, note = epsilon_with_fallback(events, delta, accountant)
    return {"epsilon": eps, "accountant": used, "requested_accountant": accountant,
            "note": note}


def _noise(make: Any, target: float, delta: float, accountant: str) -> dict[str, Any]:
    """The noise for ``target``, and which accountant bounds the plan at that noise.

    The search itself falls back to RDP wherever the accountant cannot bound a trial noise
    (:func:`dp.planning.noise_for_all`), so what to report is decided at the answer: if
    the requested accountant fails there, the noise is RDP's and the note says why.
    """
    from dp.accountants import epsilon_with_fallback
    from dp.planning import noise_for_target

    z = noise_for_target(make, target, delta, accountant)
    _, used, note = epsilon_with_fallback(make(z), delta, accountant)
    return {"noise_multiplier": z, "accountant": used, "requested_accountant": accountant,
            "note": note}


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if getattr(args, n) is None]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise SecureFedError(f"this form also needs {flags}")


def _form_ab(args: argparse.Namespace) -> dict[str, Any]:
    _need(args, "sample_rate", "steps")
    q, t, d = args.sample_rate, args.steps, args.delta
    base = {"sample_rate": q, "steps": t, "delta": d}
    if args.target_epsilon is not None:
        out = _noise(lambda z: _gaussian_events(z, q, t), args.target_epsilon, d,
                     args.accountant)
        return {"form": "noise", "target_epsilon": args.target_epsilon, **base, **out}
    _need(args, "noise_multiplier")
    out = _epsilon(_gaussian_events(args.noise_multiplier, q, t), d, args.accountant)
    return {"form": "epsilon", "noise_multiplier": args.noise_multiplier, **base, **out}


def plan_from_args(args: argparse.Namespace) -> RunPlan:
    """The :class:`RunPlan` the ``train`` flags describe (DP-SGD rate as Opacus: 1/ceil(n/B))."""
    from dp.planning import RunPlan

    cohort = args.cohort if args.cohort is not None else args.clients
    if args.clients < 1 or not 1 <= cohort <= args.clients:
        raise SecureFedError(f"--cohort: need 1 <= --cohort <= --clients (got --cohort {cohort}, --clients {args.clients})")
    local_steps, local_rate = 0, 1.0
    if args.samples_per_client is not None and args.local_epochs > 0:
        per_epoch = math.ceil(args.samples_per_client / args.batch_size)
        local_rate = 1.0 / per_epoch
        local_steps = args.local_epochs * int(1 / local_rate)
    ratio = args.release_noise_ratio
    if ratio is None:  # train's default: split only where both mechanisms run
        ratio = default_release_ratio(args.release_rate is not None and local_steps > 0)
    return RunPlan(rounds=args.rounds, cohort_rate=cohort / args.clients,
                   release_rate=args.release_rate, local_steps=local_steps,
                   local_rate=local_rate, release_noise_ratio=ratio,
                   participation=args.participation)


def _form_c(args: argparse.Namespace) -> dict[str, Any]:
    from dp.planning import epsilon_per_round, noise_for_plan, plan_events

    plan = plan_from_args(args)
    d = args.delta
    out: dict[str, Any] = {"form": "plan", "delta": d, "plan": {
        "rounds": plan.rounds, "cohort_rate": plan.cohort_rate,
        "release_rate": plan.release_rate, "local_steps_per_round": plan.local_steps,
        "local_rate": plan.local_rate, "release_noise_ratio": plan.release_noise_ratio,
        "participation": plan.participation}}
    if args.target_epsilon is not None:
        # where PRV cannot bound the plan at the answer, the final-epsilon check below says so
        z = noise_for_plan(plan, args.target_epsilon, d, args.accountant)
        out["note"] = None
        out["target_epsilon"] = args.target_epsilon
    else:
        _need(args, "noise_multiplier")
        z = args.noise_multiplier
        out["note"] = None
    out["noise_multiplier"] = z
    out["epsilon_per_round_rdp"] = epsilon_per_round(plan, z, d)
    if args.accountant == "prv":
        fin = _epsilon(plan_events(plan, z), d, "prv")
        out["final_epsilon_prv"] = fin["epsilon"] if fin["accountant"] == "prv" else None
        out["note"] = out["note"] or fin["note"]
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SecureFedError(f"--from-run: {path} is missing (is this a run folder written by train?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SecureFedError(f"--from-run: cannot read {path}: {exc}") from None


def _run_from_folder(run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(config, RunPrivacy, config.json) of the train run in ``run_dir``, from its files."""
    from secure_fed.aggregation.layout import VectorLayout
    from secure_fed.config import TrainConfig
    from secure_fed.privacy.noise import RunPrivacy

    raw = _read_json(run_dir / "config.json")
    if not isinstance(raw, dict):
        raise SecureFedError(f"--from-run: {run_dir / 'config.json'} is not a JSON object")
    cfg = TrainConfig.from_dict(raw)
    if cfg.dp == "off":
        raise SecureFedError(f"--from-run: the run in {run_dir} trained without DP (--dp off): nothing to plan")
    try:
        blocks = _read_json(run_dir / "layout.json")
        layout = VectorLayout.build([(str(b["name"]), tuple(b["shape"]), b["bound"]) for b in blocks])
        counts = [int(n) for n in _read_json(run_dir / "partition.json")["samples_per_client"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SecureFedError(f"--from-run: layout.json or partition.json in {run_dir} is malformed: {exc!r}") from None
    threshold = int(raw.get("threshold_used") or 1)
    return cfg, RunPrivacy.for_config(cfg, layout, threshold, counts), raw


class _QuietParser(argparse.ArgumentParser):
    """A parser whose errors are one-line :class:`SecureFedError`s (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise SecureFedError(f"--train: {message} (the flags after --train are train's: run_secure.py train --help)")


def _run_from_flags(flags: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """(config, RunPrivacy, {}) of the run ``train FLAGS`` would start (built as train builds it)."""
    from secure_fed.cli import train as train_cli
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    parser = _QuietParser(prog="budget --train", add_help=False)
    train_cli.add_arguments(parser)
    ns = parser.parse_args(flags)
    keys = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in vars(ns).items() if k in keys}).replace(executor="local")
    if cfg.dp == "off":
        raise SecureFedError("--train: --dp off plans no noise")
    trainer = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    try:
        assert trainer.privacy is not None
        return cfg, trainer.privacy, {}
    finally:
        trainer.close()


def _form_d(args: argparse.Namespace) -> dict[str, Any]:
    if args.from_run is not None:
        cfg, privacy, raw = _run_from_folder(Path(args.from_run))
    else:
        cfg, privacy, raw = _run_from_flags(list(args.train))
    plan = privacy.plan()
    return {"form": "run", "run_dir": args.from_run, "delta": cfg.delta, "accountant": cfg.accountant,
            "unit": cfg.dp, "mechanism": cfg.mechanism, "placement": cfg.noise_placement,
            "threshold": privacy.threshold, "rounds": cfg.rounds, "target_epsilon": cfg.target_epsilon,
            "noise_multiplier": plan.noise_multiplier, "planned_epsilon": plan.epsilon,
            "worst_client": plan.worst_client, "worst_client_samples": plan.worst_client_samples,
            "codec_gamma": plan.codec_gamma, "release_noise_ratio": privacy.s.release_noise_ratio,
            "recorded_noise_multiplier": raw.get("noise_multiplier_used"),
            "round_events": [event_to_dict(e) for e in privacy.at(plan.noise_multiplier).planned_events(
                1, [plan.worst_client])],
            "note": None}


def _plan_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    """The plan of form (c) as (quantity, value) rows, in the words of train's flags."""
    plan, z = res["plan"], res["noise_multiplier"]
    rows = [("rounds", str(plan["rounds"])),
            ("participation", "every round (worst)" if plan["participation"] == "worst"
             else "ceil(rounds * cohort / clients) rounds (expected)"),
            ("cohort rate", f"{plan['cohort_rate']:g}"),
            ("DP-SGD steps per round", f"{plan['local_steps_per_round']} at rate {plan['local_rate']:.6g}"
             if plan["local_steps_per_round"] else "none"),
            ("release rate", "none" if plan["release_rate"] is None else f"{plan['release_rate']:g}"),
            ("release noise ratio", f"{plan['release_noise_ratio']:g}")]
    rows.append(("noise multiplier (DP-SGD)" if plan["local_steps_per_round"] else "noise multiplier",
                 f"{z:.6g}"))
    if plan["release_rate"] is not None and plan["local_steps_per_round"]:
        rows.append(("release noise multiplier", f"{z * plan['release_noise_ratio']:.6g}"))
    if res.get("target_epsilon") is not None:
        rows.append(("target epsilon", f"{res['target_epsilon']:g}"))
    rows.append(("delta", f"{res['delta']:g}"))
    return rows


def format_text(res: dict[str, Any]) -> str:
    """The human-readable output of ``budget`` (``--json`` prints ``res`` itself)."""
    lines = [res["note"]] if res.get("note") else []
    if res["form"] == "epsilon":
        lines.append(f"epsilon = {res['epsilon']:.6g} at delta = {res['delta']:g} "
                     f"({res['accountant']}; noise {res['noise_multiplier']:g}, rate "
                     f"{res['sample_rate']:g}, {res['steps']} steps)")
    elif res["form"] == "noise":
        lines.append(f"noise multiplier = {res['noise_multiplier']:.6g} for epsilon <= "
                     f"{res['target_epsilon']:g} at delta = {res['delta']:g} ({res['accountant']})")
    elif res["form"] == "run":
        lines.append(f"noise multiplier = {res['noise_multiplier']:.10g} ({res['unit']}-level, {res['mechanism']} noise, "
                     f"{res['placement']}, t = {res['threshold']}; codec gamma {res['codec_gamma']})")
        lines.append(f"planned epsilon = {res['planned_epsilon']:.6g} at delta = {res['delta']:g} ({res['accountant']}) "
                     f"after {res['rounds']} rounds for the worst client: client {res['worst_client']}, "
                     f"{res['worst_client_samples']} samples")
        if res.get("recorded_noise_multiplier") is not None:
            lines.append(f"the run recorded noise multiplier {res['recorded_noise_multiplier']:.10g}")
    else:
        lines += ["| plan | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in _plan_rows(res)]
        lines += ["", "| round | epsilon (rdp) |", "|---:|---:|"]
        lines += [f"| {r} | {e:.4f} |" for r, e in enumerate(res["epsilon_per_round_rdp"], 1)]
        if res.get("final_epsilon_prv") is not None:
            lines.append(f"final epsilon (prv) = {res['final_epsilon_prv']:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``budget``; 0 on success, 2 on a configuration error (message on stderr)."""
    try:
        if args.from_run is not None and args.train is not None:
            raise SecureFedError("give --from-run or --train, not both")
        if args.from_run is not None or args.train is not None:
            res = _form_d(args)
        else:
            res = _form_c(args) if args.rounds is not None else _form_ab(args)
    except SecureFedError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    print(json.dumps(res, sort_keys=True) if args.json else format_text(res))
    return 0


__all__ = ["ERROR_PREFIX", "add_arguments", "format_text", "plan_from_args", "run"]
