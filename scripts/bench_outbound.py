"""A firewalled hospital in a 3-site consortium: three daemons in three Linux network namespaces
on one bridge; site-00's namespace drops every inbound TCP connection attempt (nftables).

    sudo .venv/bin/python scripts/bench_outbound.py [--all-reachable] [--rounds 5]

By default site-00's card says `reachable = false` (the consortium file makes it dial its
neighbours); `--all-reachable` leaves every card reachable, which is what gossipmed did before
outbound-only sites existed (run it with PYTHONPATH pointing at an older checkout to measure
that code). Prints the wall time, the inbound connection attempts the firewall dropped, and per
site the neighbours heard and seconds of each round. Needs root, iproute2 and nftables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from netns_support import Namespaces

from gossipmed.metrics import METRICS_FILE, read_metrics
from node.daemon import cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all-reachable", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    args = parser.parse_args()
    print(f"code: {Path(cluster.__file__).parents[2]}")

    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": args.rounds, "site_index": i, "problem": "quadratic", "seed": 5},
            "gossip": {"round_timeout_s": args.round_timeout},
            "train": {"lr": 0.1},
        }

    net = Namespaces(3, tag="gmbench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            sites = cluster.create_cluster(
                root, nodes=3, topology="ring", addresses=net.addresses, sections=sections
            )
            if not args.all_reachable:
                from gossipmed.consortium.roster import load_roster, save_roster
                from gossipmed.consortium.setup import with_outbound_only

                consortium = root / cluster.CONSORTIUM_FILE
                roster = with_outbound_only(load_roster(consortium), [sites[0].name])
                save_roster(roster, consortium)
            net.firewall(0)
            start = time.monotonic()
            procs = [cluster.start_daemon(s, prefix=net.prefix(i)) for i, s in enumerate(sites)]
            for p in procs:
                p.wait(timeout=args.rounds * args.round_timeout * 3 + 300)
            print(
                f"exit codes {[p.returncode for p in procs]}, wall {time.monotonic() - start:.1f} s"
            )
            print(f"inbound connection attempts dropped: {net.dropped_connection_attempts(0)}")
            for s in sites:
                recs = read_metrics(s / METRICS_FILE)
                heard = [r.neighbours_heard for r in recs]
                seconds = [round(r.seconds, 2) for r in recs]
                print(f"{s.name}: heard {heard} of 2; seconds {seconds}")
    finally:
        net.close()


if __name__ == "__main__":
    main()
