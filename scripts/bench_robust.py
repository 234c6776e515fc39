"""Poisoning robustness: honest sites' accuracy under attack, per mixing rule.

16 sites on a random 4-regular graph, 2 attackers (chosen by the seed), every attack x every
mixing rule, against the clean run of the same rule. Learner: scripts/bench_task.py (softmax
regression on hashed n-grams of icd10 chapters, Dirichlet split); everything else is the
simulator's real path (envelopes, peer, mixing rules, node.attacks).

    .venv/bin/python scripts/bench_robust.py --rounds 40 --json docs/bench/robust_raw.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_task import BowFactory, bench_parser, run_gossip, write_rows


def run_one(
    factory: BowFactory, *, rule: str, attack: str, attackers: int, args: argparse.Namespace
) -> dict[str, Any]:
    sim = {
        "topology": args.topology,
        "degree": args.degree,
        "rounds": args.rounds,
        "eval_every": args.rounds,
        "aggregation": rule,
        "attack": attack,
        "attackers": attackers,
        "attack_scale": args.scale,
        "seed": args.seed,
    }
    stats = run_gossip(factory, sim=sim, sites=args.sites, local_steps=args.local_steps)
    return {"rule": rule, "attack": attack, **stats}


def main() -> None:
    p = bench_parser(__doc__, rounds=40)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--rules", default="weighted,median,trimmed-mean,clipped")
    p.add_argument("--attacks", default="sign-flip,scale")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    factory = BowFactory(n_sites=args.sites, alpha=args.alpha, seed=args.seed)
    rows = []
    for rule in args.rules.split(","):
        clean = run_one(factory, rule=rule, attack="none", attackers=0, args=args)
        rows.append(clean)
        print(json.dumps(clean), flush=True)
        for attack in args.attacks.split(","):
            row = run_one(factory, rule=rule, attack=attack, attackers=args.attackers, args=args)
            row["drop_vs_clean_points"] = 100 * (
                clean["honest_accuracy_mean"] - row["honest_accuracy_mean"]
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(args, rows)


if __name__ == "__main__":
    main()
