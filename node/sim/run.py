"""A simulation's run directory: the resolved config, metrics as they happen, adapters, and
the summary `gossipmed inspect` reads.

    RUN/config.toml          the resolved config (feed it back with --config)
    RUN/metrics.jsonl        one record per site per round, streamed
    RUN/adapters/<site>/     final adapters (PEFT format for the language model)
    RUN/baselines/...        local-only and centralized runs, with --baselines
    RUN/summary.json
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gossipmed.metrics import METRICS_FILE, MetricsWriter, RoundRecord
from gossipmed.storage.atomic import atomic_write_bytes, atomic_write_json
from node.sim.config import SimConfig, to_toml
from node.sim.factories import LearnerFactory
from node.sim.simulation import ProgressCallback, RunResult, Simulation

BASELINE_DIRS = {"local": "baselines/local-only", "central": "baselines/centralized"}


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def save_adapters(adapters: Mapping[str, Mapping[str, bytes]], directory: Path) -> None:
    """Final per-site adapters, each in its learner's own format (files from its host)."""
    for name, files in adapters.items():
        for relative, data in files.items():
            path = directory / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def _fresh_writer(path: Path) -> MetricsWriter:
    path.unlink(missing_ok=True)
    return MetricsWriter(path)


def robustness_summary(
    config: SimConfig, *, attackers: Sequence[str], records: Sequence[RoundRecord]
) -> dict[str, Any]:
    """What `gossipmed inspect` shows: the run's attack and gossip choices, plus the honest
    sites' accuracy at the last evaluated round."""
    honest = [r for r in records if r.site not in attackers and r.accuracy is not None]
    last = max((r.round for r in honest), default=None)
    accs = [r.accuracy for r in honest if r.round == last and r.accuracy is not None]
    gossip = config.gossip.describe()
    codec, rule = gossip["codec"], dict(gossip["aggregation"])
    return {
        "attack": config.attack.kind,
        "attackers": list(attackers),
        "aggregation": rule.pop("rule"),
        "aggregation_params": rule,
        "codec": codec["name"],
        "topk_fraction": codec.get("fraction"),
        "drift": gossip["drift"]["name"],
        "honest_accuracy_mean": sum(accs) / len(accs) if accs else None,
        "honest_round": last,
        "mixing_bound": bound_activity(r for r in records if r.site not in attackers),
    }


def bound_activity(records: Iterable[RoundRecord]) -> dict[str, Any]:
    """How often the rule's norm bound acted: neighbour states (secure: sums) it scaled down,
    of all those mixed, over the given records."""
    mixed = clipped = 0
    for r in records:
        mixed += r.states_mixed
        clipped += r.bound_clipped
    return {
        "states_mixed": mixed,
        "bound_clipped": clipped,
        "fraction": clipped / mixed if mixed else None,
    }


def run_simulation(
    config: SimConfig,
    *,
    out_dir: Path,
    factory: LearnerFactory | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run gossip (and the baselines if asked), write the run directory, return the summary."""
    from node.report.summary import json_safe, summarize_run

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "config.toml", to_toml(config.to_mapping()).encode())
    # records stream to disk round by round: a long run can be inspected while it goes
    results: list[RunResult] = []
    with Simulation(config, factory=factory, on_progress=on_progress) as sim:
        engine = sim.engine()
        with _fresh_writer(out_dir / METRICS_FILE) as writer:
            results.append(sim.run_gossip(writer=writer))
            writer.sync()
        save_adapters(results[0].adapters, out_dir / "adapters")
        if config.sim.baselines:
            with _fresh_writer(out_dir / BASELINE_DIRS["local"] / METRICS_FILE) as writer:
                results.append(sim.run_gossip(communicate=False, writer=writer))
                writer.sync()
            sim.close()  # the centralized baseline runs here, in the driver
            with _fresh_writer(out_dir / BASELINE_DIRS["central"] / METRICS_FILE) as writer:
                results.append(sim.run_central(writer=writer))
                writer.sync()
    audit_counts: dict[str, int] = {}
    for event in sim.audit.events:
        key = f"{event['event']}:{event.get('reason', '')}"
        audit_counts[key] = audit_counts.get(key, 0) + 1
    summary = summarize_run(
        {r.name: r.records for r in results},
        topology={**sim.topology.to_dict(), "gossip_steps": sim.gossip_steps},
    )
    summary.update(
        {
            "config": config.to_mapping(),
            "gossip": config.gossip.describe(),
            "wall_seconds": {r.name: r.wall_seconds for r in results},
            "seconds_per_round": {r.name: r.wall_seconds / config.sim.rounds for r in results},
            "peak_rss_mib": peak_rss_mib(),
            "engine": engine,
            "audit": audit_counts,
            "sites": sim.names,
            "robustness": robustness_summary(
                config, attackers=sim.attackers, records=results[0].records
            ),
        }
    )
    atomic_write_json(out_dir / "summary.json", json_safe(summary))
    return summary
