"""Non-IID drift correction: D² vs plain gossip at Dirichlet alpha 0.1 (and 0.5 for scale).

16 sites on a random 4-regular graph, envelope sealing, weighted mixing; mean accuracy of
all sites and their consensus distance at the same rounds. Learner: scripts/bench_task.py
(softmax regression on hashed n-grams of icd10 chapters). Also the simulator's quadratic
problem, where plain gossip with local steps has a known bias and D² has none.

    .venv/bin/python scripts/bench_drift.py --rounds 60 --json docs/bench/drift_raw.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_task import BowFactory, bench_parser, run_gossip, write_rows

from node.sim.config import sim_config_from_mapping
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import Simulation


def quadratic_row(drift: str, *, args: argparse.Namespace) -> dict[str, Any]:
    config = sim_config_from_mapping(
        {
            "sim": {
                "problem": "quadratic",
                "topology": args.topology,
                "degree": args.degree,
                "rounds": args.rounds,
                "seed": args.seed,
            },
            "gossip": {"drift": drift},
            "data": {"n_sites": args.sites},
            "train": {"steps_per_round": args.local_steps, "lr": 0.1},
        }
    )
    factory = QuadraticFactory(n_sites=args.sites, seed=args.seed, lr=0.1)
    result = Simulation(config, factory=factory).run_gossip()
    xs = torch.stack([s["x"] for s in result.states.values()])
    last = [r for r in result.records if r.round == args.rounds - 1]
    return {
        "task": "quadratic",
        "drift": drift,
        "accuracy_mean": sum(r.accuracy or 0.0 for r in last) / len(last),
        "distance_to_optimum_mean": float((xs - factory.consensus).norm(dim=1).mean()),
        "consensus_distance": float((xs - xs.mean(0)).pow(2).sum(1).mean().sqrt()),
    }


def main() -> None:
    p = bench_parser(__doc__, rounds=60)
    p.add_argument("--alphas", default="0.1,0.5")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for drift in ("none", "d2"):
        row = quadratic_row(drift, args=args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        factory = BowFactory(n_sites=args.sites, alpha=alpha, seed=args.seed)
        for drift in ("none", "d2"):
            sim = {
                "topology": args.topology,
                "degree": args.degree,
                "rounds": args.rounds,
                "eval_every": args.rounds,
                "seed": args.seed,
            }
            stats = run_gossip(
                factory,
                sections={"sim": sim, "gossip": {"drift": drift}},
                sites=args.sites,
                local_steps=args.local_steps,
            )
            row = {"task": f"icd10 bow alpha={alpha}", "drift": drift, **stats}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(args, rows)


if __name__ == "__main__":
    main()
