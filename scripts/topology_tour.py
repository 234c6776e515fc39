"""Compare the built-in topologies for one consortium size (used by ./scripts/demo)."""

from __future__ import annotations

import argparse

from topology.graphs import graph_schedule
from topology.summary import summarize

TOUR = [
    ("ring", {}),
    ("torus", {}),
    ("random-regular", {"degree": 4}),
    ("small-world", {"degree": 4}),
    ("exponential", {}),
    ("one-peer-exponential", {}),
    ("hypercube", {}),
    ("complete", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"{'topology':<22}{'edges':>7}{'max deg':>9}{'diameter':>10}{'lambda2':>10}"
        f"{'rounds':>8}{'auto k':>8}"
    )
    for kind, kwargs in TOUR:
        schedule = graph_schedule(kind, nodes=args.nodes, seed=args.seed, **kwargs)
        s = summarize(kind, schedule)
        print(
            f"{kind:<22}{s.edges:>7}{s.max_degree:>9}{s.diameter:>10}"
            f"{s.lambda2:>10.4f}{s.predicted_rounds:>8}{s.auto_gossip_steps:>8}"
        )
    print("rounds = predicted gossip exchanges to shrink disagreement 1000x: ceil(ln 1e-3 / ln λ2)")
    print("auto k = exchanges per round the simulator and daemon pick by default (λ2^k <= 0.2)")


if __name__ == "__main__":
    main()
