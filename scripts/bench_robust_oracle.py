"""The ceiling for a direction gate under sign-flip: a rule told who the attackers are.

Honest sites drop exactly the attackers' states (their weight goes to self) and mix the rest
with `clipped` (gossipmed.mixing.robust.clipped_gossip). Whatever accuracy this reaches is
the price of the attack itself (the attackers' data is missing from every honest model), so
the gap between it and `cosine-clipped` is what the gate costs. Same learner and settings as
scripts/bench_robust.py (16 sites, random 4-regular graph of seed 0, 60 rounds, 2 sign-flip
attackers). Results: docs/benchmarks/robustness.md.

    .venv/bin/python scripts/bench_robust_oracle.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_task import BowFactory, run_gossip

from gossipmed.choice import Spec
from gossipmed.learn.learner import AdapterState
from gossipmed.mixing.robust import clipped_gossip
from gossipmed.mixing.rules import RULES

# The attackers the simulator picks for 16 sites, 2 attackers and seed 0 (checked below).
SEED0_ATTACKERS = frozenset({"site-09", "site-11"})


def oracle_rule(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    self_name: str,
) -> AdapterState:
    kept_weights = dict(weights)
    kept_states = dict(states)
    for attacker in (SEED0_ATTACKERS & set(kept_states)) - {self_name}:
        kept_weights[self_name] += kept_weights.pop(attacker)
        del kept_states[attacker]
    return clipped_gossip(kept_states, kept_weights, self_name=self_name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    factory = BowFactory(n_sites=16, alpha=0.5, seed=0)
    sections = {
        "sim": {
            "topology": "random-regular",
            "degree": 4,
            "rounds": args.rounds,
            "eval_every": args.rounds,
            "seed": 0,
        },
        "gossip": {"aggregation": {"rule": "oracle-gate"}},
        "attack": {"kind": "sign-flip", "attackers": 2, "scale": 10.0},
    }
    spec = Spec(name="oracle-gate", build=lambda _p: oracle_rule, summary="knows the attackers")
    with RULES.registered("oracle-gate", spec):
        stats = run_gossip(factory, sections=sections, sites=16, local_steps=10)
    if set(stats["attackers"]) != SEED0_ATTACKERS:  # type: ignore[call-overload]
        raise SystemExit(f"the simulator chose other attackers: {stats['attackers']}")
    keys = (
        "honest_accuracy_mean",
        "honest_accuracy_min",
        "honest_consensus_distance",
        "honest_accuracy_by_attacker_neighbours",
    )
    print(json.dumps({k: stats[k] for k in keys}))


if __name__ == "__main__":
    main()
