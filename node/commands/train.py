"""`gossipmed train`: one site trains alone (the local-only baseline) with DP-SGD."""

from __future__ import annotations

import argparse
import math

from gossipmed.learn.config import DATASETS
from gossipmed.strict_json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one site alone (local-only baseline) and save its adapter",
        description=(
            "Train the adapter of one site on its own slice of a dataset with DP-SGD, print "
            "held-out accuracy before/after and the epsilon spent, and save the adapter in "
            "PEFT format. No networking: this is the baseline gossip must beat. DP sampling "
            "and noise are seeded from the OS at every start, so two runs differ."
        ),
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-path", help="user data: a .jsonl/.txt file or a folder")
    p.add_argument("--site", type=int, default=0, help="which site's slice (default 0)")
    p.add_argument("--sites", type=int, default=4, help="number of sites to split into")
    p.add_argument("--partition", choices=("natural", "iid", "dirichlet"), default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha")
    p.add_argument("--adapter", choices=("lora", "ffa_lora", "prompt", "full"), default="lora")
    p.add_argument("--epsilon", type=float, help="DP budget (omit for non-private training)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip-norm", type=float, help="per-sample clip norm")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps")
    p.add_argument("--lr", type=float, help="Adam learning rate (default train.lr, 0.02)")
    p.add_argument(
        "--optimizer", choices=("adam", "sgd"), default="adam", help="per-site optimiser"
    )
    p.add_argument("--batch-size", type=int, default=64, help="expected (Poisson) batch size")
    p.add_argument("--eval-size", type=int, default=300, help="held-out examples to score")
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
    if args.lr is not None:
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
        dp=DPConfig(enabled=args.epsilon is not None, epsilon=args.epsilon or 1.0, **dp_kw),  # type: ignore[arg-type]
        train=TrainConfig(**train_kw),  # type: ignore[arg-type]
        base_model=args.base_model,
        compute=ComputeConfig(device=args.device, base_dtype=args.dtype),
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.progress import Progress

    from gossipmed.errors import ConfigError
    from gossipmed.learn.config import LearningConfig
    from gossipmed.learn.train import build_site_learners
    from gossipmed.privacy.randomness import RandomSource

    config = _config(args)
    assert isinstance(config, LearningConfig)
    if not 0 <= args.site < config.data.n_sites:
        raise ConfigError(f"--site must be in 0..{config.data.n_sites - 1}")
    out = Path(args.out) if args.out else None
    # a real site: sampling and noise must not be reproducible from anything public
    setup = build_site_learners(
        config, randomness=RandomSource.from_os(), ledger_dir=out, progress=not args.json
    )
    learner = setup.learners[args.site]
    before = learner.evaluate_report()
    chunk = max(1, min(20, args.steps))
    losses, seconds, done = [], 0.0, 0
    with Progress(disable=args.json, transient=True) as progress:
        task = progress.add_task(f"training {learner.name}", total=args.steps)
        while done < args.steps:
            k = min(chunk, args.steps - done)
            stats = learner.train_round(steps=k)
            losses.append(stats.train_loss)
            seconds += stats.seconds
            done += k
            progress.update(task, completed=done)
    after = learner.evaluate_report()
    from node.report.evaluation import describe, report_metrics

    was, now = report_metrics(before), report_metrics(after)
    if out is not None:
        learner.save_adapter(out / "adapter")
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
        "accuracy_before": was["accuracy"],  # null for free text: loss and perplexity
        "accuracy_after": now["accuracy"],
        "accuracy_norm_before": was["accuracy_norm"],
        "accuracy_norm_after": now["accuracy_norm"],
        "loss_before": was["eval_loss"],
        "loss_after": now["eval_loss"],
        "perplexity_before": was["eval_perplexity"],
        "perplexity_after": now["eval_perplexity"],
        "epsilon": learner.epsilon if config.dp.enabled else None,
        "delta": config.dp.delta if config.dp.enabled else None,
        "noise_multiplier": learner.noise_multiplier,
        "seconds_per_step": seconds / args.steps,
        "adapter_dir": str(out / "adapter") if out else None,
    }
    if args.json:
        print(dumps(result))
        return 0
    eps = "non-private" if result["epsilon"] is None else f"epsilon {learner.epsilon:.2f}"
    print(f"site {learner.name} ({len(learner.train_data)} examples), {args.steps} steps, {eps}")
    print(f"held-out before: {describe(was)}")
    print(f"held-out after:  {describe(now)}")
    if not math.isnan(seconds):
        print(f"{seconds / args.steps * 1000:.0f} ms/step")
    if out:
        print(f"adapter saved to {out / 'adapter'}")
    return 0
