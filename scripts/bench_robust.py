"""Poisoning robustness: honest sites' accuracy under attack, per mixing rule.

16 sites on a random 4-regular graph, 2 attackers (chosen by the seed), every attack x every
mixing rule, against the clean run of the same rule. Learner: scripts/bench_task.py (softmax
regression on hashed n-grams of icd10 chapters, Dirichlet split); everything else is the
simulator's real path (envelopes, peer, mixing rules, node.sim.attacks).

    .venv/bin/python scripts/bench_robust.py --rounds 40 --json docs/bench/robust_raw.json

`--rules` takes any name in gossipmed.mixing.rules.RULES (cosine-clipped included). For
cosine-clipped, `--min-cosine` sets the gate threshold (the rule's own parameter, passed
through the run's [gossip] config) and `--trace-cosines` records, per round, the cosines the
honest sites saw (honest vs attacker neighbours) in each row; the trace comes from a traced
copy of the rule registered for the run under its own name.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_task import BowFactory, bench_parser, run_gossip, write_rows

from gossipmed.choice import Spec
from gossipmed.learn.learner import AdapterState
from gossipmed.mixing.robust import cosine_clipped_gossip, cosines_to_self
from gossipmed.mixing.rules import RULES, CosineClipParams

CosineLog = dict[int, dict[str, dict[str, float | None]]]
"""round -> site -> neighbour -> cosine with the site's own state."""
TRACED = "cosine-clipped-traced"


@contextmanager
def traced_cosine_rule(log: CosineLog) -> Iterator[str]:
    """`cosine-clipped`, recording what every site saw, registered under its own name for the
    duration of the block (the registry's public registration; removed again after)."""

    def build(params: CosineClipParams) -> Any:
        calls: collections.Counter[str] = collections.Counter()

        def traced(
            states: Mapping[str, Mapping[str, torch.Tensor]],
            weights: Mapping[str, float],
            *,
            self_name: str,
        ) -> AdapterState:
            round_ = calls[self_name]  # every site mixes exactly once per round
            calls[self_name] += 1
            log.setdefault(round_, {})[self_name] = cosines_to_self(states, self_name=self_name)
            return cosine_clipped_gossip(
                states,
                weights,
                self_name=self_name,
                radius=params.radius,
                min_cosine=params.min_cosine,
            )

        return traced

    with RULES.registered(TRACED, Spec(name=TRACED, build=build, params=CosineClipParams)):
        yield TRACED


def summarise_cosines(
    log: CosineLog, *, attackers: set[str], threshold: float
) -> list[dict[str, float | int]]:
    """Per round, over honest sites only: the cosines of honest and of attacker neighbours,
    and how many of each the gate dropped / let through."""
    out: list[dict[str, float | int]] = []
    for round_ in sorted(log):
        honest: list[float] = []
        bad: list[float] = []
        for site, seen in log[round_].items():
            if site in attackers:
                continue
            for name, cos in seen.items():
                if cos is not None:
                    (bad if name in attackers else honest).append(cos)
        row: dict[str, float | int] = {"round": round_}
        if honest:
            row |= {
                "honest_min": min(honest),
                "honest_median": statistics.median(honest),
                "honest_dropped": sum(c <= threshold for c in honest),
                "honest_seen": len(honest),
            }
        if bad:
            row |= {
                "attacker_max": max(bad),
                "attacker_median": statistics.median(bad),
                "attacker_passed": sum(c > threshold for c in bad),
                "attacker_seen": len(bad),
            }
        out.append(row)
    return out


def run_one(
    factory: BowFactory, *, rule: str, attack: str, attackers: int, args: argparse.Namespace
) -> dict[str, Any]:
    sim = {
        "topology": args.topology,
        "degree": args.degree,
        "rounds": args.rounds,
        "eval_every": args.rounds,
        "seed": args.seed,
    }
    log: CosineLog | None = {} if args.trace_cosines and rule == "cosine-clipped" else None
    min_cosine = args.min_cosine if rule == "cosine-clipped" else None
    with contextlib.ExitStack() as stack:
        name = stack.enter_context(traced_cosine_rule(log)) if log is not None else rule
        aggregation: dict[str, Any] = {"rule": name}
        if min_cosine is not None:
            aggregation["min_cosine"] = min_cosine
        sections: dict[str, dict[str, Any]] = {
            "sim": sim,
            "gossip": {"aggregation": aggregation},
            "attack": {"kind": attack, "attackers": attackers, "scale": args.scale},
        }
        stats = run_gossip(
            factory, sections=sections, sites=args.sites, local_steps=args.local_steps
        )
    row: dict[str, Any] = {"rule": rule, "attack": attack, **stats}
    if min_cosine is not None:
        row["min_cosine"] = min_cosine
    if log is not None:
        threshold = 0.0 if min_cosine is None else min_cosine
        row["cosine_trace"] = summarise_cosines(
            log, attackers={str(a) for a in row["attackers"]}, threshold=threshold
        )
    return row


def brief(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without its per-round trace (that goes to --json only)."""
    return {k: v for k, v in row.items() if k != "cosine_trace"}


def main() -> None:
    p = bench_parser(__doc__, rounds=40)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--rules", default="weighted,median,trimmed-mean,clipped")
    p.add_argument("--attacks", default="sign-flip,scale")
    p.add_argument(
        "--min-cosine", type=float, help="cosine-clipped gate threshold (default: the rule's, 0)"
    )
    p.add_argument(
        "--trace-cosines",
        action="store_true",
        help="record per-round cosines seen by honest sites (cosine-clipped runs)",
    )
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    factory = BowFactory(n_sites=args.sites, alpha=args.alpha, seed=args.seed)
    rows = []
    for rule in args.rules.split(","):
        clean = run_one(factory, rule=rule, attack="none", attackers=0, args=args)
        rows.append(clean)
        print(json.dumps(brief(clean)), flush=True)
        for attack in args.attacks.split(","):
            row = run_one(factory, rule=rule, attack=attack, attackers=args.attackers, args=args)
            row["drop_vs_clean_points"] = 100 * (
                clean["honest_accuracy_mean"] - row["honest_accuracy_mean"]
            )
            rows.append(row)
            print(json.dumps(brief(row)), flush=True)
    write_rows(args, rows)


if __name__ == "__main__":
    main()
