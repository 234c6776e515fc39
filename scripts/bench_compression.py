"""Bytes per round vs accuracy for every codec, at the same rounds.

16 sites on a random 4-regular graph, plain weighted gossip, envelope sealing (so the byte
counts are what the daemon would put on the wire: header, signature, box overhead and
payload). Codecs: raw float32, fp16, bf16, int8, and top-k with error feedback at several
fractions. Learner: scripts/bench_task.py (softmax regression on hashed n-grams of icd10
chapters, Dirichlet split).

    .venv/bin/python scripts/bench_compression.py --rounds 60 --json docs/bench/compression_raw.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_task import BowFactory, bench_parser, run_gossip, write_rows


def main() -> None:
    p = bench_parser(__doc__, rounds=60)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--codecs", default="raw,fp16,bf16,int8")
    p.add_argument("--fractions", default="0.1,0.05,0.02,0.01,0.005")
    args = p.parse_args()
    torch.set_num_threads(1)
    factory = BowFactory(n_sites=args.sites, alpha=args.alpha, seed=args.seed)
    runs: list[tuple[str, Any]] = [(c, c) for c in args.codecs.split(",")]
    runs += [
        (f"topk {f}", {"name": "topk", "fraction": float(f)}) for f in args.fractions.split(",")
    ]
    rows = []
    base: dict[str, Any] | None = None
    for label, codec in runs:
        sim = {
            "topology": args.topology,
            "degree": args.degree,
            "rounds": args.rounds,
            "eval_every": args.rounds,
            "seed": args.seed,
        }
        row: dict[str, Any] = {"codec": label}
        sections = {"sim": sim, "gossip": {"codec": codec}}
        row.update(
            run_gossip(factory, sections=sections, sites=args.sites, local_steps=args.local_steps)
        )
        if base is None:
            base = row
        row["bytes_ratio_vs_raw"] = base["bytes_per_round_all"] / row["bytes_per_round_all"]
        row["accuracy_change_points"] = 100 * (
            row["honest_accuracy_mean"] - base["honest_accuracy_mean"]
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_rows(args, rows)


if __name__ == "__main__":
    main()
