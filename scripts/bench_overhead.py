"""Overhead of gossip over local-only training, on the demo's settings, arms interleaved.

`gossipmed simulate --baselines` runs gossip first and local-only second, so the gossip arm
also pays the process's first-use costs and whatever load the machine had then. This runs the
two arms alternately (gossip, local, gossip, local, ...) in one process on one shared model,
each arm with its own freshly built sites, and reports the median seconds per round of each
(wall and CPU; set-up excluded, as in summary.json) and the ratio.

Demo settings (scripts/demo_simulation.sh): 4 sites on a ring, icd10, Dirichlet 0.5,
10 local DP steps per round, evaluation every 5 rounds on 210 examples, 4000 training
examples, default gossip (auto exchanges per round, signed and encrypted envelopes).

    python scripts/bench_overhead.py --rounds 5 --repeats 3 --out overhead.jsonl
    python scripts/bench_overhead.py --no-train   # the communication cost alone
    python scripts/bench_overhead.py --engine ray --sites-per-worker 2   # sites in Ray actors
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def demo_config(
    *, rounds: int, train: bool, engine: str = "inprocess", sites_per_worker: int | None = None
) -> Any:
    from node.sim.config import sim_config_from_mapping

    sim: dict[str, Any] = {
        "topology": "ring",
        "rounds": rounds,
        "eval_every": 5,
        "train": train,
        "engine": engine,
    }
    if sites_per_worker is not None:
        sim["sites_per_worker"] = sites_per_worker
    return sim_config_from_mapping(
        {
            "sim": sim,
            "data": {
                "n_sites": 4,
                "dataset": "icd10",
                "partition": "dirichlet",
                "alpha": 0.5,
                "max_train_examples": 4000,
                "eval_size": 210,
            },
            "train": {"steps_per_round": 10},
        }
    )


def time_phases(sim: Any) -> dict[str, float]:
    """Wall seconds the driver spends in each host call (train, seal, deliver, mix_step,
    complete, consensus...), summed over a run: where the gossip arm's extra time goes."""
    group = sim.hosts()
    call = group.call
    spent: dict[str, float] = {}

    def timed(method: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(method, *args, **kwargs)
        finally:
            spent[method] = spent.get(method, 0.0) + time.perf_counter() - started

    group.call = timed
    return spent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds per arm run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each arm, alternating")
    p.add_argument("--no-train", action="store_true", help="mixing only: the bare overhead")
    p.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess")
    p.add_argument("--sites-per-worker", type=int, help="Ray engine: sites per actor")
    p.add_argument("--out", help="append the JSON rows to this file")
    args = p.parse_args()

    from node.sim.simulation import Simulation

    sim = Simulation(
        demo_config(
            rounds=args.rounds,
            train=not args.no_train,
            engine=args.engine,
            sites_per_worker=args.sites_per_worker,
        )
    )
    phases = time_phases(sim)
    rows: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            arms = (True, False) if repeat % 2 == 0 else (False, True)  # neither always first
            for communicate in arms:
                cpu_start = time.process_time()
                phases.clear()
                result = sim.run_gossip(communicate=communicate)
                rows.append(
                    {
                        "arm": result.name,
                        "repeat": repeat,
                        "rounds": args.rounds,
                        "train": not args.no_train,
                        "s_per_round": result.wall_seconds / args.rounds,
                        "cpu_s_with_setup": time.process_time() - cpu_start,
                        "load": os.getloadavg()[0],
                        "phase_s_per_round": {
                            k: round(v / args.rounds, 4) for k, v in sorted(phases.items())
                        },
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        sim.close()
    gossip = statistics.median(r["s_per_round"] for r in rows if r["arm"] == "gossip")
    local = statistics.median(r["s_per_round"] for r in rows if r["arm"] == "local")
    summary = {
        "kind": "overhead",
        "engine": args.engine,
        "sites_per_worker": args.sites_per_worker,
        "gossip_s_per_round": gossip,
        "local_s_per_round": local,
        "ratio": gossip / local,
        "gossip_steps": sim.gossip_steps,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            for row in [*rows, summary]:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
