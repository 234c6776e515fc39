"""`gossipmed simulate`: N sites with the daemon's peer logic, in this process or in Ray."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gossipmed.strict_json import dumps


def register(sub: Any) -> None:
    from gossipmed.mixing.drift import DRIFT
    from gossipmed.mixing.rules import RULES
    from gossipmed.wire.compression import ENCODERS
    from node.sim.attacks import ATTACKS
    from topology.graphs import KINDS
    from topology.mixing import RULES as MIXING_RULES

    p = sub.add_parser(
        "simulate",
        help="simulate a gossip consortium (in one process, or in Ray)",
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
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="RUN_DIR",
        help="run directory: new or empty (a used one is refused unless --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="clear RUN_DIR first when it holds an earlier run (its config.toml has [sim]); "
        "a folder that is not a run directory is never cleared",
    )
    g = p.add_argument_group("topology")
    g.add_argument(
        "--topology",
        choices=KINDS,
        metavar="KIND",
        help=f"one of: {', '.join(KINDS)} (default ring)",
    )
    g.add_argument("--nodes", type=int, help="number of sites (default 4)")
    g.add_argument("--degree", type=int, help="degree for random-regular / small-world")
    g.add_argument("--p", type=float, help="edge / rewiring probability")
    g.add_argument("--topology-file", metavar="GRAPH", help="graph file for --topology file")
    g.add_argument(
        "--mixing",
        choices=MIXING_RULES,
        help="how mixing weights follow from the graph ([consortium] mixing; default "
        "metropolis-hastings)",
    )
    g.add_argument(
        "--secure-aggregation",
        action="store_true",
        default=None,
        help="each site learns only the weighted sum of its neighbours' states "
        "([consortium] secure_aggregation; one exchange per round, >= 3 neighbours per site)",
    )
    d = p.add_argument_group("data and learning")
    d.add_argument(
        "--problem",
        choices=("lm", "quadratic"),
        help="lm: clinical language model (default); quadratic: synthetic, instant",
    )
    d.add_argument("--dataset", help="icd10, heart, notes, user, medqa-mc or medqa-text")
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
    d.add_argument(
        "--target-modules",
        help="LoRA targets, comma-separated (e.g. q_proj,v_proj or c_attn); default auto: chosen "
        "per architecture",
    )
    d.add_argument(
        "--device", help="where the shared base runs: auto (default), cpu, cuda, cuda:N, mps"
    )
    d.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the frozen base (adapters and DP arithmetic stay float32)",
    )
    d.add_argument(
        "--microbatch",
        help="examples per forward/backward pass: bounds memory, not results (default auto)",
    )
    d.add_argument("--eval-every", type=int, help="evaluate every N rounds (default 1)")
    d.add_argument(
        "--gossip-steps",
        type=int,
        help="send-and-mix exchanges per round after training ([consortium] gossip_steps; "
        "default 0: auto, the fewest that shrink disagreement to 0.2 x per round given the "
        "topology's lambda2; 1: classic one exchange per round)",
    )
    d.add_argument(
        "--no-train",
        action="store_true",
        help="gossip only, no local steps: measures pure consensus contraction",
    )
    d.add_argument(
        "--seed",
        type=int,
        help="seed for graph, data, init, faults AND the simulated DP noise: a simulation is "
        "reproducible on purpose; real sites (run, train) draw noise from the OS",
    )
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
    f.add_argument(
        "--round-timeout",
        type=float,
        help="how long sites wait for a neighbour ([gossip] round_timeout_s, simulated s)",
    )
    r = p.add_argument_group("mixing rule, codec, drift ([gossip]) and attacks ([attack])")
    r.add_argument(
        "--aggregation",
        choices=RULES.names(),
        metavar="RULE",
        help="mixing rule over neighbour states: "
        + "; ".join(f"{n}: {s.summary}" for n, s in RULES.items())
        + " (default bounded)",
    )
    r.add_argument(
        "--rule-param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter of the mixing rule, repeatable (e.g. min_cosine=0.1, trim=0.2, "
        "radius=1.5)",
    )
    r.add_argument(
        "--codec",
        choices=ENCODERS.names(),
        metavar="CODEC",
        help="update encoding on the wire: "
        + "; ".join(f"{n}: {s.summary}" for n, s in ENCODERS.items())
        + " (default raw)",
    )
    r.add_argument("--topk-fraction", type=float, help="share of entries topk sends (0.01)")
    r.add_argument(
        "--codec-refresh-every",
        type=int,
        help="topk: send a dense keyframe every N rounds (0: first round only)",
    )
    r.add_argument(
        "--drift",
        choices=DRIFT.names(),
        help="non-IID drift correction: "
        + "; ".join(f"{n}: {s.summary}" for n, s in DRIFT.items())
        + " (default none)",
    )
    r.add_argument(
        "--attack",
        choices=ATTACKS,
        help="poisoning behaviour of the attacker sites (default none)",
    )
    r.add_argument("--attackers", type=int, help="number of attacker sites, chosen by --seed")
    r.add_argument("--attack-scale", type=float, help="factor of --attack scale (default 10)")
    e = p.add_argument_group(
        "engine (where the sites run; never changes the results)",
        "inprocess runs every site in this process; ray runs them in Ray actors, several sites "
        "sharing one base model per actor, on this machine or a Ray cluster (needs the optional "
        "extra: pip install 'gossipmed[ray]')",
    )
    e.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        help="inprocess (default) or ray ([sim] engine)",
    )
    e.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (HOST:PORT from `ray start --head`, or auto); default: start "
        "a private Ray on 127.0.0.1 for this run ([sim] ray_address)",
    )
    e.add_argument(
        "--sites-per-worker",
        type=int,
        metavar="N",
        help="sites each Ray worker holds (default: sites spread evenly over the cluster's CPUs)",
    )
    e.add_argument(
        "--worker-cpus",
        type=float,
        metavar="C",
        help="CPUs (and torch threads) per Ray worker (default 1)",
    )
    e.add_argument(
        "--worker-gpus",
        type=float,
        metavar="G",
        help="GPUs per Ray worker (default 0, or 1 with --device cuda: one worker per GPU)",
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
    from node.sim.config import SimConfig, load_toml, merge_overrides, sim_config_from_mapping

    raw = load_toml(args.config) if args.config else {}
    seed = args.seed
    overrides: dict[str, dict[str, Any]] = {
        "sim": {
            "topology": args.topology,
            "degree": args.degree,
            "p": args.p,
            "topology_file": args.topology_file,
            "rounds": args.rounds,
            "eval_every": args.eval_every,
            "train": False if args.no_train else None,
            "baselines": True if args.baselines else None,
            "sealing": args.sealing,
            "problem": args.problem,
            "seed": seed,
            "engine": args.engine,
            "ray_address": args.ray_address,
            "sites_per_worker": args.sites_per_worker,
            "worker_cpus": args.worker_cpus,
            "worker_gpus": args.worker_gpus,
        },
        "consortium": {
            "gossip_steps": args.gossip_steps,
            "mixing": args.mixing,
            "secure_aggregation": args.secure_aggregation,
        },
        "gossip": {"round_timeout_s": args.round_timeout, "drift": args.drift},
        "attack": {
            "kind": args.attack,
            "attackers": args.attackers,
            "scale": args.attack_scale,
        },
        "faults": {
            "drop_prob": args.drop,
            "offline_prob": args.churn,
            "straggler_prob": args.straggler_prob,
            "straggler_delay": args.straggler_delay,
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
        "adapter": {
            "kind": "full" if args.pretrain else args.adapter,
            "rank": args.rank,
            "target_modules": _targets(args.target_modules),
        },
        "compute": {"device": args.device, "base_dtype": args.dtype},
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
            "microbatch": _auto_or_int(args.microbatch),
        },
    }
    merged = merge_overrides(raw, overrides)
    gossip = merged.setdefault("gossip", {})
    rule_params = parse_params(args.rule_param or [], flag="--rule-param")
    if args.aggregation is not None or rule_params:
        gossip["aggregation"] = override_choice(
            gossip.get("aggregation"), name=args.aggregation, params=rule_params, name_key="rule"
        )
    codec_params = {"fraction": args.topk_fraction, "refresh_every": args.codec_refresh_every}
    codec_params = {k: v for k, v in codec_params.items() if v is not None}
    if args.codec is not None or codec_params:
        gossip["codec"] = override_choice(
            gossip.get("codec"), name=args.codec, params=codec_params, name_key="name"
        )
    if args.base_model is not None:
        merged["base_model"] = args.base_model
    config: SimConfig = sim_config_from_mapping(merged)
    return config


def _targets(value: str | None) -> str | list[str] | None:
    if value is None or value == "auto":
        return value
    return [t.strip() for t in value.split(",") if t.strip()]


def _auto_or_int(value: str | None) -> str | int | None:
    from gossipmed.errors import ConfigError

    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--microbatch takes a number or auto, got {value!r}") from None


def parse_params(items: list[str], *, flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values read as TOML scalars (numbers, true/false, quoted strings)."""
    import tomllib

    from gossipmed.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


def override_choice(
    current: Any, *, name: str | None, params: dict[str, Any], name_key: str
) -> dict[str, Any]:
    """A component table from the config file's value with the flags' name and parameters
    applied (a new name drops the old component's parameters)."""
    if isinstance(current, dict):
        table = dict(current)
    elif isinstance(current, str):
        table = {name_key: current}
    else:
        table = {}
    if name is not None and table.get(name_key) != name:
        table = {name_key: name}
    from gossipmed.mixing.rules import DEFAULT_RULE

    table.setdefault(name_key, DEFAULT_RULE if name_key == "rule" else "raw")
    table.update(params)
    return table


def run(args: argparse.Namespace) -> int:
    import sys

    from node.sim.engine.ray_group import WorkerLost

    config = build_config(args)
    if config.sim.engine == "ray":
        from node.sim.engine.ray_group import import_ray, on_this_machine

        import_ray(local=on_this_machine(config.sim.ray_address))  # a missing extra: exit 2
    try:
        return _run(args, config)
    except WorkerLost as exc:  # not a usage error: the run itself failed
        sys.stderr.write(f"gossipmed simulate: error: {' '.join(str(exc).split())}\n")
        return 1


def _run(args: argparse.Namespace, config: Any) -> int:
    from node.report.summary import print_summary
    from node.sim.run import run_simulation
    from node.sim.run_dir import prepare_run_dir

    prepare_run_dir(args.out, overwrite=args.overwrite)
    if args.json:
        summary = run_simulation(config, out_dir=args.out)
        print(dumps(summary, indent=2, sort_keys=True))
        return 0

    from node.progress import progress_lines

    labels = {"gossip": "gossip", "local": "local-only", "central": "centralized"}
    with progress_lines(unit="rounds") as update:

        def on_progress(name: str, done: int, total: int) -> None:
            update(labels.get(name, name), done, total)

        summary = run_simulation(config, out_dir=args.out, on_progress=on_progress)
    print_summary(summary)
    print(f"run directory: {args.out}  (gossipmed inspect {args.out} --plot curves.png)")
    return 0
