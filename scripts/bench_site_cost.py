"""CPU cost per site-exchange of the in-process simulator as the number of sites grows.

CPU time (not wall time) of each round of `gossipmed simulate --problem quadratic` on a
random 4-regular graph with one exchange per round, divided by the number of sites: on a
shared machine CPU time is far steadier than wall time. Also the set-up (topology summary,
schedule, sealers, peers) in wall and CPU seconds. `--tree DIR` measures another checkout
(e.g. an older commit unpacked with `git archive`), for before/after comparisons.

    python scripts/bench_site_cost.py --sites 64,256,1024 --rounds 5
    python scripts/bench_site_cost.py --sites 4096 --rounds 0      # set-up only
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", default="64,256,1024")
    p.add_argument("--rounds", type=int, default=5, help="0: set-up only")
    p.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    args = p.parse_args()
    sys.path.insert(0, args.tree)
    from node.sim.config import sim_config_from_mapping
    from node.sim.simulation import Simulation

    for n in [int(s) for s in args.sites.split(",")]:
        raw = {
            "sim": {"problem": "quadratic", "topology": "random-regular", "degree": 4,
                    "rounds": max(args.rounds, 1), "seed": 0},
            "consortium": {"gossip_steps": 1},
            "data": {"n_sites": n},
        }  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        sim = Simulation(sim_config_from_mapping(raw))
        peers = sim.build_peers()
        row = {
            "sites": n,
            "tree": args.tree,
            "setup_wall_s": time.perf_counter() - wall,
            "setup_cpu_s": time.process_time() - cpu,
        }
        if args.rounds:
            marks: list[float] = []
            sim.build_peers = lambda _p=peers, **_: _p  # type: ignore[method-assign]
            sim.on_progress = lambda *_, _m=marks: _m.append(time.process_time())
            start = time.process_time()
            sim.run_gossip()
            per_round = [b - a for a, b in zip([start, *marks], marks, strict=False)]
            steady = per_round[1:] or per_round  # round 0 also derives each edge's box keys
            row["cpu_ms_per_site_round"] = 1000 * statistics.median(steady) / n
            row["cpu_s_rounds"] = per_round
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
