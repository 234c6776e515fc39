"""`gossipmed simulate`: N sites in one process, same peer logic as the daemon."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_KINDS_HELP = (
    "ring, torus, complete, star, hypercube, random-regular, erdos-renyi, small-world, "
    "exponential, one-peer-exponential, file"
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a gossip consortium in one process",
        description=(
            "Run N simulated sites in lockstep over an in-memory network with the daemon's own "
            "round logic (train, seal, send, verify, mix, checkpoint). Flags override "
            "--config TOML. Writes RUN_DIR/config.toml (resolved; rerun with --config), "
            "metrics.jsonl (one record per site per round), adapters/<site>/ and summary.json; "
            "with --baselines also the local-only and centralized runs under baselines/."
        ),
        epilog="Example: gossipmed simulate --nodes 8 --topology ring --dataset icd10 "
        "--partition dirichlet --alpha 0.5 --rounds 20 --baselines --out runs/ring8",
    )
    p.add_argument("--config", type=Path, metavar="SIM.toml", help="config file (see docs)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    g = p.add_argument_group("topology")
    g.add_argument("--topology", metavar="KIND", help=f"one of: {_KINDS_HELP} (default ring)")
    g.add_argument("--nodes", type=int, help="number of sites (default 4)")
    g.add_argument("--degree", type=int, help="degree for random-regular / small-world")
    g.add_argument("--p", type=float, help="edge / rewiring probability")
    g.add_argument("--topology-file", metavar="GRAPH", help="graph file for --topology file")
    g.add_argument("--mixing", help="metropolis-hastings (default) or best-constant")
    g.add_argument("--aggregation", help="mixing rule over neighbour states (default weighted)")
    d = p.add_argument_group("data and learning")
    d.add_argument(
        "--problem",
        choices=("lm", "quadratic"),
        help="lm: clinical language model (default); quadratic: synthetic, instant",
    )
    d.add_argument("--dataset", help="icd10, heart, notes or user")
    d.add_argument("--data-path", help="user data file or folder (--dataset user)")
    d.add_argument("--partition", help="natural, iid or dirichlet")
    d.add_argument("--alpha", type=float, help="Dirichlet concentration (small = skewed)")
    d.add_argument("--max-train-examples", type=int, help="pooled training examples kept")
    d.add_argument("--eval-size", type=int, help="held-out test examples (default 300)")
    d.add_argument("--rounds", type=int, help="gossip rounds (default 20)")
    d.add_argument("--local-steps", type=int, help="local DP-SGD steps per round")
    d.add_argument("--lr", type=float, help="learning rate")
    d.add_argument("--batch-size", type=int, help="expected batch size")
    d.add_argument("--adapter", help="lora, ffa_lora, prompt, or full (federated pre-training)")
    d.add_argument("--rank", type=int, help="LoRA rank")
    d.add_argument(
        "--pretrain",
        action="store_true",
        help="federated pre-training: gossip every parameter of the base model "
        "(--adapter full) with the loss on all tokens",
    )
    d.add_argument("--base-model", help="local Hugging Face model folder (default: tiny base)")
    d.add_argument("--eval-every", type=int, help="evaluate every N rounds (default 1)")
    d.add_argument(
        "--gossip-steps",
        type=int,
        help="send-and-mix exchanges per round after training (default 0: auto, the fewest "
        "that shrink disagreement to 0.2 x per round given the topology's lambda2; 1: classic "
        "one exchange per round)",
    )
    d.add_argument(
        "--no-train",
        action="store_true",
        help="gossip only, no local steps: measures pure consensus contraction",
    )
    d.add_argument("--seed", type=int, help="seed for graph, data, init and faults")
    dp = p.add_argument_group("differential privacy")
    dp.add_argument("--epsilon", type=float, help="per-site privacy budget (target epsilon)")
    dp.add_argument("--noise", type=float, help="noise multiplier (default: calibrated)")
    dp.add_argument("--clip", type=float, help="per-sample gradient clip norm")
    dp.add_argument("--no-dp", action="store_true", help="train without differential privacy")
    f = p.add_argument_group("faults")
    f.add_argument("--drop", type=float, help="probability each message is lost")
    f.add_argument("--churn", type=float, help="probability a site is offline in a round")
    f.add_argument("--straggler-prob", type=float, help="probability a site is slow in a round")
    f.add_argument("--straggler-delay", type=float, help="a slow site's delay (simulated s)")
    f.add_argument("--round-timeout", type=float, help="how long sites wait (simulated s)")
    r = p.add_argument_group("robustness and compression")
    r.add_argument(
        "--attack",
        choices=("none", "sign-flip", "scale", "noise", "label-flip"),
        help="poisoning behaviour of the attacker sites (default none)",
    )
    r.add_argument("--attackers", type=int, help="number of attacker sites, chosen by --seed")
    r.add_argument("--attack-scale", type=float, help="factor of --attack scale (default 10)")
    r.add_argument(
        "--codec",
        choices=("raw", "fp16", "bf16", "int8", "topk"),
        help="update encoding on the wire (default raw); topk sends sparse deltas with "
        "error feedback",
    )
    r.add_argument("--topk-fraction", type=float, help="share of entries topk sends (0.01)")
    r.add_argument(
        "--codec-refresh-every",
        type=int,
        help="topk: send a dense keyframe every N rounds (0: first round only)",
    )
    r.add_argument(
        "--drift",
        choices=("none", "d2"),
        help="non-IID drift correction (d2: D² exact-diffusion; default none)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--baselines",
        action="store_true",
        help="also run local-only and centralized on the same data and seed",
    )
    o.add_argument(
        "--sealing",
        choices=("envelope", "plaintext"),
        help="envelope (default: signed+encrypted, as the daemon) or plaintext",
    )
    o.add_argument("--json", action="store_true", help="print summary.json, no progress bar")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    from node.sim_config import SimConfig, load_toml, merge_overrides, sim_config_from_mapping

    raw = load_toml(args.config) if args.config else {}
    seed = args.seed
    overrides: dict[str, dict[str, Any]] = {
        "sim": {
            "topology": args.topology,
            "degree": args.degree,
            "p": args.p,
            "topology_file": args.topology_file,
            "mixing": args.mixing,
            "aggregation": args.aggregation,
            "rounds": args.rounds,
            "eval_every": args.eval_every,
            "gossip_steps": args.gossip_steps,
            "train": False if args.no_train else None,
            "baselines": True if args.baselines else None,
            "sealing": args.sealing,
            "problem": args.problem,
            "seed": seed,
            "attack": args.attack,
            "attackers": args.attackers,
            "attack_scale": args.attack_scale,
            "codec": args.codec,
            "topk_fraction": args.topk_fraction,
            "codec_refresh_every": args.codec_refresh_every,
            "drift": args.drift,
        },
        "faults": {
            "drop_prob": args.drop,
            "offline_prob": args.churn,
            "straggler_prob": args.straggler_prob,
            "straggler_delay": args.straggler_delay,
            "round_timeout": args.round_timeout,
        },
        "data": {
            "dataset": args.dataset,
            "path": args.data_path,
            "partition": args.partition,
            "alpha": args.alpha,
            "n_sites": args.nodes,
            "seed": seed,
            "max_train_examples": args.max_train_examples,
            "eval_size": args.eval_size,
        },
        "adapter": {"kind": "full" if args.pretrain else args.adapter, "rank": args.rank},
        "dp": {
            "epsilon": args.epsilon,
            "noise_multiplier": args.noise,
            "clip_norm": args.clip,
            "enabled": False if args.no_dp else None,
        },
        "train": {
            "lr": args.lr,
            "steps_per_round": args.local_steps,
            "batch_size": args.batch_size,
            "loss_on": "all" if args.pretrain else None,
            "seed": seed,
        },
    }
    merged = merge_overrides(raw, overrides)
    if args.base_model is not None:
        merged["base_model"] = args.base_model
    config: SimConfig = sim_config_from_mapping(merged)
    return config


def run(args: argparse.Namespace) -> int:
    from node.inspect_run import json_safe, print_summary
    from node.simulate import run_simulation

    config = build_config(args)
    if args.json:
        summary = run_simulation(config, out_dir=args.out)
        print(json.dumps(json_safe(summary), indent=2, sort_keys=True))
        return 0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    labels = {"gossip": "gossip", "local": "local-only", "central": "centralized"}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"{labels.get(name, name)} rounds", total=total)
            progress.update(tasks[name], completed=done)

        summary = run_simulation(config, out_dir=args.out, on_progress=on_progress)
    print_summary(summary)
    print(f"run directory: {args.out}  (gossipmed inspect {args.out} --plot curves.png)")
    return 0
