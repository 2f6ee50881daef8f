"""``run_secure.py train`` (the default subcommand): train FedHPro or a baseline.

Every flag maps to a :class:`~secure_fed.config.TrainConfig` field (validated there); the
trainer and the report are imported only when a run starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from secure_fed.config import (
    ACCOUNTANTS,
    ALGORITHMS,
    CLASSIFIERS,
    DEFAULT_RELEASE_NOISE_RATIO,
    DP_MODES,
    HP_CONTROLS,
    MECHANISMS,
    PARTITIONS,
    PLACEMENTS,
    SECAGG_MODES,
    TrainConfig,
)
from secure_fed.errors import ConfigError
from secure_fed.executor import add_arguments as add_executor_arguments


class _Given(argparse.Action):
    """Stores the value and records that the flag was given (``args.<dest>_given``): --resume
    tells an explicit --rounds N (extend the run) from the default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``train`` arguments on ``p`` (every TrainConfig field, with its default)."""
    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="digits (embedded, no download), mnist5k (needs the mnist5k extra), mnist, cifar10, cifar100")
    g.add_argument("--data-root", default=d.data_root, help="folder holding torchvision's MNIST/CIFAR files (never downloaded unless --download)")
    g.add_argument("--download", action="store_true", help="allow torchvision to download MNIST/CIFAR into --data-root")
    g.add_argument("--clients", type=int, default=d.clients, help="number of clients the training set is split over")
    g.add_argument("--partition", choices=PARTITIONS, default=d.partition, help="label split across clients")
    g.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration of the label skew (smaller = more skewed)")
    g.add_argument("--imbalance", type=float, default=d.imbalance, help="long-tail imbalance ratio rho of the global training set (1 = balanced)")

    g = p.add_argument_group("federated training")
    g.add_argument("--algorithm", choices=ALGORITHMS, default=d.algorithm, help="FedHPro or a baseline in the same harness (fedsa: README, \"FedSA\"; gfpl: README, \"GFPL\")")
    g.add_argument("--cohort", type=int, default=d.cohort, help="clients per round (sampled without replacement)")
    g.add_argument("--rounds", type=int, default=d.rounds, action=_Given,
                   help="communication rounds; with --resume, the new total: extends the run")
    g.add_argument("--local-epochs", type=int, default=d.local_epochs, help="local epochs per round")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="local minibatch size")
    g.add_argument("--lr", type=float, default=d.lr, help="local SGD learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="local SGD momentum")
    g.add_argument("--feature-dim", type=int, default=d.feature_dim, help="feature dimension of the model (default: the model's own)")

    g = p.add_argument_group("FedHPro")
    g.add_argument("--length-of-hp", type=int, default=d.length_of_hp, help="hyper-prototypes per class (L); they start as i.i.d. N(0, 1) draws (the paper's init) from --seed")
    g.add_argument("--rounds-of-hp", type=int, default=d.rounds_of_hp, help="server steps of gradient matching per round: plain full-batch SGD (no momentum) on P minimizing sum over matched classes of 1 - cos(U_c W, g_c(P))")
    g.add_argument("--hp-lr", type=float, default=d.hp_lr, help="server learning rate of gradient matching (plain SGD) and of meta classifier training")
    g.add_argument("--hp-control", choices=HP_CONTROLS, default=d.hp_control,
                   help="control arm: none (FedHPro); random: never match, clients train toward the fixed random N(0, 1) anchors "
                        "from round 2; frozen: each class is matched once, its first round through the gate, then kept. The release is "
                        "uploaded and charged in every arm, so only the server's use of it differs")
    g.add_argument("--meta-per-class", type=int, default=d.meta_per_class, help="meta prototypes per class")
    g.add_argument("--meta-steps", type=int, default=d.meta_steps, help="SGD steps training the meta classifier")
    g.add_argument("--tau", type=float, default=d.tau, help="HPCL temperature")
    g.add_argument("--margin", action=argparse.BooleanOptionalAction, default=d.margin, help="client-specific margin in HPCL")
    g.add_argument("--hpcl-weight", type=float, default=d.hpcl_weight, help="weight of the HPCL loss")
    g.add_argument("--hpal-weight", type=float, default=d.hpal_weight, help="weight of the HPAL loss")
    g.add_argument("--classifier", choices=CLASSIFIERS, default=d.classifier, help="fedavg: keep the averaged classifier; meta: replace it by one trained on the meta prototypes")
    g.add_argument("--proto-weight", type=float, default=d.proto_weight, help="FedProto: weight of the prototype distance loss")

    g = p.add_argument_group("FedSA (semantic anchors; the paper's values are not in its seed text, these are this project's)")
    g.add_argument("--fedsa-tau", type=float, default=d.fedsa_tau, help="temperature of RMCL, the margin-enhanced contrastive loss of each feature's cosine to the anchors")
    g.add_argument("--fedsa-margin", type=float, default=d.fedsa_margin, help="cosine margin subtracted from the own-class anchor's similarity in RMCL")
    g.add_argument("--fedsa-rmcl-weight", type=float, default=d.fedsa_rmcl_weight, help="weight of RMCL in the local loss")
    g.add_argument("--fedsa-cc-weight", type=float, default=d.fedsa_cc_weight,
                   help="weight of classifier calibration (the classifier's cross-entropy on the anchors); under --dp sample it runs "
                        "after DP-SGD on the public anchors only, as many steps as DP-SGD took")
    g.add_argument("--fedsa-momentum", type=float, default=d.fedsa_momentum,
                   help="server EMA: each anchor becomes n(m * anchor + (1 - m) * n(summed prototype)) for the classes whose count clears the gate")

    g = p.add_argument_group("GFPL (Gaussian class statistics and pseudo-features; README, \"GFPL\": 'seed' marks the paper's values)")
    g.add_argument("--gfpl-lambda", type=float, default=d.gfpl_lambda,
                   help="weight of the dot-regression loss to the fixed ETF in the hybrid loss CE + lambda * DR (Eq. 13; the seed text gives no value)")
    g.add_argument("--gfpl-proj-dim", type=int, default=d.gfpl_proj_dim,
                   help="dimension of the projection the ETF lives in (default: the seed's, 50 for digits/mnist, 80 for cifar; at least the class count)")
    g.add_argument("--gfpl-start", type=int, default=d.gfpl_start,
                   help="first round the server calibrates the head on pseudo-features (the seed's delayed start; its value is not in the seed text)")
    g.add_argument("--gfpl-interval", type=int, default=d.gfpl_interval,
                   help="calibrate every this many rounds from --gfpl-start (the seed's retraining interval; its value is not in the seed text)")
    g.add_argument("--gfpl-pseudo", type=int, default=d.gfpl_pseudo, help="pseudo-features sampled per class per calibration (no value in the seed text)")
    g.add_argument("--gfpl-calib-epochs", type=int, default=d.gfpl_calib_epochs, help="epochs over the pseudo-features per calibration")
    g.add_argument("--gfpl-calib-lr", type=float, default=d.gfpl_calib_lr, help="calibration SGD rate (seed: 0.01)")
    g.add_argument("--gfpl-calib-momentum", type=float, default=d.gfpl_calib_momentum, help="calibration SGD momentum (seed: 0.5)")
    g.add_argument("--gfpl-calib-batch", type=int, default=d.gfpl_calib_batch, help="calibration batch size")
    g.add_argument("--gfpl-clip", type=float, default=d.gfpl_clip,
                   help="under --dp: L2 norm R each sample's feature is clipped to and then divided by before its moments enter the "
                        "upload (sample unit: with its squares and the count coordinate, one sample moves the release by at most "
                        "sqrt(2 / (1 - 0.5^2)) = 1.63); the server scales the Gaussians back by R")
    g.add_argument("--gfpl-min-snr", type=float, default=d.gfpl_min_snr,
                   help="under --dp: the server uses a class's Gaussian only if the estimated energy of its summed features is at "
                        "least this times the energy of their noise (0: whenever its count clears the gate; this project's value)")

    g = p.add_argument_group("secure aggregation")
    g.add_argument("--secagg", choices=SECAGG_MODES, default=d.secagg, help="off: a trusted aggregator sums in the clear; secagg: Bonawitz et al. (complete graph); secagg+: Bell et al. (sparse Harary graph)")
    g.add_argument("--neighbors", type=int, default=d.neighbors, help="SecAgg+ graph degree k (default: chosen for the cohort size, --dropout and --max-colluders)")
    g.add_argument("--threshold", type=int, default=d.threshold, help="Shamir threshold t (default: the smallest meeting --max-colluders; a smaller one is refused)")
    g.add_argument("--bits", type=int, default=d.bits, help="ring Z_{2^bits} of the masked sum (each entry travels as ceil(bits/8) bytes)")
    g.add_argument("--authenticated", action=argparse.BooleanOptionalAction, default=d.authenticated, help="Ed25519-signed key advertisements and a consistency round (protects against an active server)")
    g.add_argument("--dropout", type=float, default=d.dropout, help="simulated probability that a client drops, at a stage drawn uniformly (seeded by --seed)")
    g.add_argument("--max-colluders", type=int, default=d.max_colluders,
                   help="c: colluding clients among any client's neighbours the secure sum must tolerate (authenticated: against an active server, "
                        "c < 2t - k - 1; else fewer than t); (k, t) are chosen from it, --dropout and --halting-bits by protocol.params.round_params")
    g.add_argument("--halting-bits", type=float, default=d.halting_bits,
                   help="a protocol round may halt (too few live share holders) with probability at most 2^-bits at --dropout")

    g = p.add_argument_group("differential privacy")
    g.add_argument("--dp", choices=DP_MODES, default=d.dp, help="privacy unit: sample (per-sample clipping + DP-SGD), client (clip the whole upload), or off")
    g.add_argument("--noise-placement", choices=PLACEMENTS, default=d.noise_placement, help="local: every client adds all the noise; distributed: a share so any t survivors carry it (needs --secagg)")
    g.add_argument("--mechanism", choices=MECHANISMS, default=d.mechanism, help="gaussian: float noise before encoding; discrete: discrete Gaussian noise in the ring after encoding")
    g.add_argument("--clip", type=float, default=d.clip, help="L2 clip norm C per sample (sample unit) or per client upload (client unit)")
    g.add_argument("--noise-multiplier", type=float, default=d.noise_multiplier, help="noise std / clip of DP-SGD and, times --release-noise-ratio, of the per-class release; overrides the noise planned from --target-epsilon")
    g.add_argument("--target-epsilon", type=float, default=d.target_epsilon, help="plan the noise for this epsilon over the run and stop before any round that would exceed it")
    g.add_argument("--no-target", dest="target_epsilon", action="store_const", const=None, help="no target epsilon (needs --noise-multiplier)")
    g.add_argument("--delta", type=float, default=d.delta, help="delta of the (epsilon, delta) guarantee")
    g.add_argument("--accountant", choices=ACCOUNTANTS, default=d.accountant, help="accountant whose epsilon is printed (RDP is always recorded too)")
    g.add_argument("--release-rate", type=float, default=d.release_rate, help="Poisson rate at which a client's samples enter its per-class gradient release")
    g.add_argument("--release-noise-ratio", type=float, default=d.release_noise_ratio,
                   help="budget split (--dp sample, an algorithm with a per-class release: fedhpro, protonorm, fedsa, gfpl): the per-class release's noise multiplier is this times DP-SGD's; "
                        "above 1 the release is noisier and DP-SGD, planned from --target-epsilon, gets less noise "
                        f"(default: {DEFAULT_RELEASE_NOISE_RATIO:g} where the budget is split, measured best on digits; 1 elsewhere)")
    g.add_argument("--proto-clip", type=float, default=d.proto_clip,
                   help="prototype release (protonorm, fedsa): L2 norm each sample's feature is clipped to before it enters its "
                        "class's prototype sum (--dp sample and client; with the count coordinate, one sample moves the release by "
                        "at most this over sqrt(1 - 0.5^2)). Those methods read only the prototypes' directions, and the noise "
                        "scales with this norm")
    g.add_argument("--pa-steps", type=int, default=d.pa_steps,
                   help="protonorm: Prototype Alignment steps (projected gradient descent on the Thomson energy of the unit "
                        "prototypes) per round; the paper gives no value, 100 is this implementation's choice")
    g.add_argument("--pa-lr", type=float, default=d.pa_lr, help="protonorm: Prototype Alignment step size (no value in the paper; our choice)")
    g.add_argument("--pu-norm", type=float, default=d.pu_norm,
                   help="protonorm: Prototype Upscaling, the norm the aligned unit prototypes are scaled to (no value in the paper; our choice)")
    g.add_argument("--pn-min-snr", type=float, default=d.pn_min_snr,
                   help="protonorm under DP: a class's direction is read in a round only if its noisy feature sum's estimated "
                        "signal energy |S|^2 - d sigma^2 is at least this times the noise energy d sigma^2 (and its noisy count "
                        "clears 3 noise sds); not in the paper, which has no DP")
    g.add_argument("--hardened", action=argparse.BooleanOptionalAction, default=d.hardened, help="secrets and noise from the OS CSPRNG (--no-hardened: seeded noise, for experiments and tests only)")
    g.add_argument("--reproducible", dest="hardened", action="store_false", help="alias of --no-hardened: --seed also drives noise and secrets")

    g = p.add_argument_group("run")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch; 0 = auto (1 for the small digits/MNIST model, where more threads only add synchronization, torch's default otherwise)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of data split, model init, cohort sampling and local shuffles")
    g.add_argument("--out", default=d.out, help="folder under which runs/<run-id>/ is created")
    g.add_argument("--run-id", default=d.run_id, help="name of the run folder (default: time-algorithm-seed)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue RUN_DIR after its last complete round (its config.json wins: a flag that "
                        "conflicts with it is refused; --rounds N extends the run to N rounds in total)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    add_executor_arguments(p.add_argument_group("executor"))



RESUME_KEEPS = ("executor", "ray_address", "workers", "server_workers", "data_root", "download")
"""Flags a resume may change: where the work runs and where the data lies do not change a run's numbers."""
RESUME_IGNORES = ("out", "run_id")


def conflicting_flags(args: argparse.Namespace, saved: TrainConfig) -> list[str]:
    """Flags given with --resume (values other than their defaults) that differ from the saved config."""
    d = TrainConfig()
    out = []
    for name in TrainConfig.__dataclass_fields__:
        if name in RESUME_KEEPS or name in RESUME_IGNORES or name == "rounds" or not hasattr(args, name):
            continue
        given = getattr(args, name)
        if given != getattr(d, name) and given != getattr(saved, name):
            out.append(f"--{name.replace('_', '-')} {given} (the run has {getattr(saved, name)})")
    return out


def run(args: argparse.Namespace) -> int:
    """Train (or resume ``--resume RUN_DIR``), then render the run's report; 0 when done."""
    from secure_fed.run.rundir import load_config
    from secure_fed.run.trainer import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoint.pt").exists() or not (run_dir / "config.json").exists():
            raise ConfigError(f"--resume: {run_dir} has no config.json and checkpoint.pt to resume from")
        cfg, _ = load_config(run_dir)
        if conflicts := conflicting_flags(args, cfg):
            raise ConfigError("--resume: the run's config.json wins; these flags conflict with it: " + "; ".join(conflicts)
                              + " (drop them, or start a new run)")
        changes = {k: getattr(args, k) for k in RESUME_KEEPS}
        if getattr(args, "rounds_given", False):
            changes["rounds"] = args.rounds  # --rounds N on resume: the new total
        cfg = cfg.replace(**changes)
        cfg.validate()
        trainer = Trainer(cfg, progress=not args.quiet, run_dir=run_dir)
        try:
            trainer.resume_from(run_dir)
        except BaseException:
            trainer.close()
            raise
    else:
        keys = set(TrainConfig.__dataclass_fields__)
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
        trainer = Trainer(cfg, progress=not args.quiet)
    print(f"run folder: {trainer.run_dir}", flush=True)
    try:
        trainer.run()
        if trainer.run_dir is not None:
            from secure_fed.report.html import render_report

            render_report(trainer.run_dir)
    finally:
        trainer.close()
    done = [r for r in trainer.history if not r.get("aborted")]
    if done:
        final = done[-1]
        eps = f", epsilon {final['epsilon']:.3f} at delta {trainer.cfg.delta}" if final.get("epsilon") is not None else ""
        print(f"final accuracy {final['accuracy']:.4f} after round {final['round']}{eps}; outputs in {trainer.run_dir}")
    return 0
