"""`gossipmed train`: one site trains alone (the local-only baseline) with DP-SGD."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from gossipmed.learn.config import DATASETS
from gossipmed.strict_json import dumps

# What one site alone trains best with (docs/benchmarks/local-training.md: one icd10 site of
# 2,000 examples, DP epsilon 8, reached 0.238 held-out accuracy on the builder-1 base and 0.200
# on today's builder-2 base); gossip prefers train.lr 0.02.
LONE_SITE_EPSILON = 8.0
LONE_SITE_LR = 0.01
LONE_SITE_BATCH = 128
LONE_SITE_STEPS = 150


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one site alone (local-only baseline) and save its adapter",
        description=(
            "Train the adapter of one site on its own slice of a dataset with DP-SGD (epsilon "
            "8 unless --epsilon or --no-dp), print held-out accuracy before/after and the "
            "epsilon spent, and save the adapter in PEFT format. No networking: this is the "
            "baseline gossip must beat. The defaults are the settings the local-only "
            "benchmark found best for one site alone (Adam lr 0.01, expected batch 128, 150 "
            "steps; gossip prefers a larger step). DP sampling and noise are seeded from the "
            "OS at every start, so two runs differ by several points: --repeat N trains N "
            "times and reports the accuracy's mean and spread."
        ),
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-path", help="user data: a .jsonl/.txt file or a folder")
    p.add_argument("--site", type=int, default=0, help="which site's slice (default 0)")
    p.add_argument("--sites", type=int, default=4, help="number of sites to split into")
    p.add_argument("--partition", choices=("natural", "iid", "dirichlet"), default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha")
    p.add_argument("--adapter", choices=("lora", "ffa_lora", "prompt", "full"), default="lora")
    p.add_argument(
        "--epsilon",
        type=float,
        default=LONE_SITE_EPSILON,
        help=f"DP budget at --delta (default {LONE_SITE_EPSILON:g})",
    )
    p.add_argument(
        "--no-dp", action="store_true", help="train without differential privacy (no budget)"
    )
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip-norm", type=float, help="per-sample clip norm")
    p.add_argument(
        "--steps", type=int, default=LONE_SITE_STEPS, help=f"optimiser steps ({LONE_SITE_STEPS})"
    )
    p.add_argument(
        "--lr", type=float, default=LONE_SITE_LR, help=f"learning rate (default {LONE_SITE_LR:g})"
    )
    p.add_argument(
        "--optimizer", choices=("adam", "sgd"), default="adam", help="per-site optimiser"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=LONE_SITE_BATCH,
        help=f"expected (Poisson) batch size (default {LONE_SITE_BATCH})",
    )
    p.add_argument("--eval-size", type=int, default=210, help="held-out examples to score")
    p.add_argument("--max-train", type=int, default=8000, help="pooled training examples")
    p.add_argument("--base-model", help="local Hugging Face model folder (default: tiny base)")
    p.add_argument(
        "--target-modules",
        default="auto",
        help="LoRA targets, comma-separated (e.g. q_proj,v_proj or c_attn); default auto: "
        "chosen per architecture",
    )
    p.add_argument(
        "--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="dtype of the frozen base (the adapter and DP arithmetic stay float32)",
    )
    p.add_argument(
        "--microbatch",
        default="auto",
        help="examples per forward/backward pass (memory, not results); default auto: sized "
        "from the model",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="data split seed; DP sampling and noise always come fresh from the OS",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="train N times from the same start (fresh DP noise each time) and report the "
        "accuracy's mean, standard deviation, min and max; saves no adapter",
    )
    p.add_argument("--out", help="save the adapter (and the privacy ledger) here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _auto_or(value: str, parse: type, flag: str) -> object:
    from gossipmed.errors import ConfigError

    if value == "auto":
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} must be auto or {parse.__name__}: {value!r}") from exc


def _config(args: argparse.Namespace) -> object:
    from gossipmed.learn.config import (
        AdapterConfig,
        ComputeConfig,
        DataConfig,
        DPConfig,
        LearningConfig,
        TrainConfig,
    )

    dp_kw: dict[str, object] = {"planned_steps": args.steps, "delta": args.delta}
    if args.clip_norm is not None:
        dp_kw["clip_norm"] = args.clip_norm
    train_kw: dict[str, object] = {
        "batch_size": args.batch_size,
        "seed": args.seed,
        "optimizer": args.optimizer,
        "microbatch": _auto_or(args.microbatch, int, "--microbatch"),
    }
    targets = None
    if args.target_modules != "auto":
        targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    train_kw["lr"] = args.lr
    return LearningConfig(
        data=DataConfig(
            dataset=args.dataset,
            n_sites=args.sites,
            partition=args.partition,
            alpha=args.alpha,
            seed=args.seed,
            path=args.data_path,
            max_train_examples=args.max_train,
            eval_size=args.eval_size,
        ),
        adapter=AdapterConfig(kind=args.adapter, target_modules=targets),
        dp=DPConfig(enabled=not args.no_dp, epsilon=args.epsilon, **dp_kw),  # type: ignore[arg-type]
        train=TrainConfig(**train_kw),  # type: ignore[arg-type]
        base_model=args.base_model,
        compute=ComputeConfig(device=args.device, base_dtype=args.dtype),
    )


def _spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation, min and max; None for what NaN-only draws lack."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
    }


def _train_once(learner: Any, *, steps: int, label: str, quiet: bool) -> float:
    """`steps` steps in chunks (progress between them); the summed seconds."""
    from node.progress import progress_lines

    chunk = max(1, min(20, steps))
    seconds, done = 0.0, 0
    with progress_lines(quiet=quiet, unit="steps") as update:
        while done < steps:
            k = min(chunk, steps - done)
            seconds += learner.train_round(steps=k).seconds
            done += k
            update(label, done, steps)
    return seconds


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gossipmed.errors import ConfigError
    from gossipmed.learn.config import LearningConfig
    from gossipmed.learn.train import build_site_learners, load_shared_model
    from gossipmed.privacy.randomness import RandomSource
    from node.report.evaluation import describe, report_metrics

    config = _config(args)
    assert isinstance(config, LearningConfig)
    if not 0 <= args.site < config.data.n_sites:
        raise ConfigError(f"--site must be in 0..{config.data.n_sites - 1}")
    if args.repeat < 1:
        raise ConfigError("--repeat must be >= 1")
    if args.repeat > 1 and args.out:
        raise ConfigError("--repeat measures the spread and saves nothing; drop --out")
    out = Path(args.out) if args.out else None
    model = load_shared_model(config, progress=not args.json)
    draws: list[dict[str, Any]] = []
    for draw in range(args.repeat):
        # a real site: sampling and noise must not be reproducible from anything public; each
        # draw starts from the same fresh adapter (the learners are built anew over one model)
        setup = build_site_learners(
            config, randomness=RandomSource.from_os(), model=model, ledger_dir=out
        )
        learner = setup.learners[args.site]
        before = learner.evaluate_report()
        label = f"training {learner.name}" + (
            f" ({draw + 1}/{args.repeat})" if args.repeat > 1 else ""
        )
        seconds = _train_once(learner, steps=args.steps, label=label, quiet=args.json)
        after = learner.evaluate_report()
        was, now = report_metrics(before), report_metrics(after)
        draws.append({"before": was, "after": now, "seconds": seconds})
    if out is not None:
        learner.save_adapter(out / "adapter")
    last = draws[-1]
    seconds = sum(d["seconds"] for d in draws) / len(draws)
    result = {
        "dataset": args.dataset,
        "site": learner.name,
        "n_train": len(learner.train_data),
        "adapter": args.adapter,
        "target_modules": list(setup.model.target_modules or ()),
        "device": str(setup.model.device),
        "base_dtype": config.compute.base_dtype,
        "microbatch": learner.microbatch,
        "steps": args.steps,
        "lr": config.train.lr,
        "batch_size": config.train.batch_size,
        "accuracy_before": last["before"]["accuracy"],  # null for free text
        "accuracy_after": last["after"]["accuracy"],
        "accuracy_norm_before": last["before"]["accuracy_norm"],
        "accuracy_norm_after": last["after"]["accuracy_norm"],
        "loss_before": last["before"]["eval_loss"],
        "loss_after": last["after"]["eval_loss"],
        "perplexity_before": last["before"]["eval_perplexity"],
        "perplexity_after": last["after"]["eval_perplexity"],
        "epsilon": learner.epsilon if config.dp.enabled else None,
        "delta": config.dp.delta if config.dp.enabled else None,
        "noise_multiplier": learner.noise_multiplier,
        "seconds_per_step": seconds / args.steps,
        "adapter_dir": str(out / "adapter") if out else None,
        "repeat": args.repeat,
        "accuracy_after_draws": [d["after"]["accuracy"] for d in draws],
        "accuracy_after_spread": _spread(
            [d["after"]["accuracy"] for d in draws if d["after"]["accuracy"] is not None]
        ),
    }
    if args.json:
        print(dumps(result))
        return 0
    eps = "non-private" if result["epsilon"] is None else f"epsilon {learner.epsilon:.2f}"
    print(f"site {learner.name} ({len(learner.train_data)} examples), {args.steps} steps, {eps}")
    spread = result["accuracy_after_spread"]
    if args.repeat > 1 and spread["mean"] is not None:
        draws_text = ", ".join(f"{d['after']['accuracy']:.3f}" for d in draws)
        print(
            f"held-out accuracy after: mean {spread['mean']:.3f} (sd {spread['std']:.3f}, "
            f"min {spread['min']:.3f}, max {spread['max']:.3f}) over {args.repeat} draws: "
            f"{draws_text}"
        )
    print(f"held-out before: {describe(last['before'])}")
    print(f"held-out after:  {describe(last['after'])}")
    if not math.isnan(seconds):
        print(f"{seconds / args.steps * 1000:.0f} ms/step")
    if out:
        print(f"adapter saved to {out / 'adapter'}")
    return 0
