"""One slow site among fast ones: rounds per hour and how often the slow site's update is mixed.

    .venv/bin/python scripts/bench_straggler.py --delay 2 --timeout 10 --seconds 60 [--work 0]

Three real daemons (libp2p on 127.0.0.1, real envelopes and checkpoints) run in this process on
a ring of 3 (every site neighbours every other), solving the synthetic quadratic problem, so a
round costs milliseconds; every site's learner sleeps `--work` seconds in each round's training
(default 0) and site-00's `--delay` seconds more (a wrapping learner: the injected delay of a
hospital with a slow GPU or a busy scheduler). The
cluster runs for `--seconds` of wall time. Reported per site: rounds completed and rounds per
hour; for the slow site: how many of its updates its neighbours accepted, and how many of those
they mixed (a neighbour mixes an accepted update of round r when it completes round r);
for the fast sites: the share of their rounds that mixed the slow site's update.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.metrics import METRICS_FILE, read_metrics
from node.daemon.cluster import create_cluster
from node.daemon.config import load_daemon_settings
from node.daemon.site_daemon import SiteDaemon

SLOW = "site-00"


def sections(i: int, *, timeout: float) -> dict[str, dict[str, Any]]:
    return {
        "daemon": {"rounds": 0, "site_index": i, "problem": "quadratic", "seed": 3},
        "gossip": {"round_timeout_s": timeout},
        "train": {"lr": 0.1},
    }


def slow_down(daemon: SiteDaemon, delay: float) -> None:
    """Every round's training sleeps `delay` first (it runs in a worker thread)."""
    learner: Any = daemon.peer.learner
    train_round = learner.train_round

    def slow_train_round(*, steps: int) -> Any:
        time.sleep(delay)
        return train_round(steps=steps)

    learner.train_round = slow_train_round


def run(
    root: Path, *, delay: float, timeout: float, seconds: float, work: float = 0.0
) -> dict[str, Any]:
    sites = create_cluster(
        root,
        nodes=3,
        topology="ring",
        sections=lambda i: sections(i, timeout=timeout),
        settings=ConsortiumSettings(gossip_steps=1),
    )
    daemons = [SiteDaemon(load_daemon_settings(s)) for s in sites]
    for i, d in enumerate(daemons):
        if work + (delay if i == 0 else 0.0) > 0:
            slow_down(d, work + (delay if i == 0 else 0.0))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for d in daemons:
                nursery.start_soon(d.run)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    started = time.monotonic()
    trio.run(main)
    wall = time.monotonic() - started
    done = {s.name: {r.round for r in read_metrics(s / METRICS_FILE)} for s in sites}
    result: dict[str, Any] = {
        "work_s": work,
        "delay_s": delay,
        "round_timeout_s": timeout,
        "wall_s": wall,
    }
    per_site: dict[str, Any] = {}
    slow_accepted = slow_mixed = 0
    for s in sites:
        rounds = done[s.name]
        entry: dict[str, Any] = {
            "rounds": len(rounds),
            "rounds_per_hour": len(rounds) * 3600.0 / wall,
        }
        if s.name != SLOW:
            accepted = {
                int(e["round"])
                for e in read_audit(s / "audit.jsonl")
                if e["sender"] == SLOW and e["outcome"] == "accepted"
            }
            mixed = accepted & rounds
            slow_accepted += len(accepted)
            slow_mixed += len(mixed)
            entry["rounds_mixing_slow"] = len(mixed)
            entry["share_mixing_slow"] = len(mixed) / len(rounds) if rounds else 0.0
            entry["slow_updates_refused"] = sum(
                1
                for e in read_audit(s / "audit.jsonl")
                if e["sender"] == SLOW and e["outcome"] == "rejected"
            )
        per_site[s.name] = entry
    result["sites"] = per_site
    result["slow_updates_accepted"] = slow_accepted
    result["slow_updates_mixed"] = slow_mixed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=2.0, help="slow site's extra s per round")
    parser.add_argument("--timeout", type=float, default=10.0, help="round_timeout_s")
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time to run")
    parser.add_argument("--work", type=float, default=0.0, help="every site's s of training")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            Path(tmp), delay=args.delay, timeout=args.timeout, seconds=args.seconds, work=args.work
        )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"every site trains {args.work:g} s per round, the slow one {args.delay:g} s more; "
        f"round_timeout_s {args.timeout:g}; {result['wall_s']:.0f} s of wall time"
    )
    for name, entry in result["sites"].items():
        line = f"{name}: {entry['rounds']} rounds, {entry['rounds_per_hour']:.0f} per hour"
        if name != SLOW:
            line += (
                f"; mixed the slow site's update in {entry['rounds_mixing_slow']} of them "
                f"({100 * entry['share_mixing_slow']:.0f} %), refused "
                f"{entry['slow_updates_refused']} of its updates"
            )
        print(line)
    print(
        f"slow site's updates accepted by neighbours: {result['slow_updates_accepted']}, "
        f"mixed: {result['slow_updates_mixed']}"
    )


if __name__ == "__main__":
    main()
