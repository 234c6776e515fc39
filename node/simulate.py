"""`gossipmed simulate`: many sites in one process, the daemon's exact round logic.

Each site is a `node.peer.Peer`; the simulator drives them in lockstep over an in-memory
network with simulated time: a dropped message never arrives, an offline site skips the
round, and a straggler whose delay exceeds the round timeout is heard one round late (and
rejected as stale). Every decision comes from the seed, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gossipmed.checkpoint import atomic_write_bytes, atomic_write_json, save_state
from gossipmed.config import LearningConfig
from gossipmed.errors import ConfigError
from gossipmed.learner import AdapterState, EvalStats, Learner, TrainStats
from gossipmed.metrics import METRICS_FILE, MetricsWriter, RoundRecord, consensus_distances
from gossipmed.wire import NonFiniteTensor
from node.faults import FaultInjector
from node.peer import (
    ListAudit,
    MixingSchedule,
    Peer,
    PlaintextSealer,
    Sealer,
    resolve_gossip_steps,
)
from node.peer_options import apply_peer_options, options_from_sim, robustness_summary
from node.sim_config import SimConfig, to_toml
from topology.graphs import graph_schedule
from topology.summary import TopologySummary, summarize

ProgressCallback = Callable[[str, int, int], None]
"""(run name, rounds done, rounds total)"""

BASELINE_DIRS = {"local": "baselines/local-only", "central": "baselines/centralized"}


class LearnerFactory(Protocol):
    """Builds learners that share whatever can be shared (the frozen base model)."""

    def site_learners(self) -> Sequence[Learner]:
        """Fresh learners (new state, new privacy ledger), one per site, in site order."""
        ...

    def pooled_learner(self) -> Learner:
        """One learner on all sites' data pooled (the centralized baseline)."""
        ...


# --- the synthetic quadratic problem ---------------------------------------------------------


class QuadraticLearner:
    """Site i minimises 0.5||x - c_i||^2; the consortium's optimum is mean(c_i).

    Accuracy is the fraction of coordinates whose sign matches the consortium optimum's, so
    a site that only learns its own skewed c_i scores visibly below one that gossips.
    """

    def __init__(
        self,
        *,
        start: torch.Tensor,
        target: torch.Tensor,
        consensus_target: torch.Tensor,
        lr: float,
    ) -> None:
        self.x = start.clone()
        self.target = target
        self.consensus_target = consensus_target
        self.lr = lr

    def get_state(self) -> AdapterState:
        return {"x": self.x}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.x = state["x"].detach().clone().to(torch.float32)

    def train_round(self, *, steps: int) -> TrainStats:
        started = time.perf_counter()
        for _ in range(steps):
            self.x = self.x - self.lr * (self.x - self.target)
        loss = 0.5 * float(((self.x - self.target) ** 2).mean())
        return TrainStats(
            train_loss=loss,
            epsilon=0.0,
            n_examples=1,
            steps=steps,
            seconds=time.perf_counter() - started,
        )

    def evaluate(self) -> EvalStats:
        loss = 0.5 * float(((self.x - self.consensus_target) ** 2).mean())
        agree = (torch.sign(self.x) == torch.sign(self.consensus_target)).float().mean()
        return EvalStats(loss=loss, accuracy=float(agree))


class QuadraticFactory:
    def __init__(
        self, *, n_sites: int, seed: int, lr: float, dim: int = 256, heterogeneity: float = 2.0
    ) -> None:
        # float32 like real adapters (the envelope refuses float64 on the wire)
        gen = torch.Generator().manual_seed(seed)
        self.consensus = torch.randn(dim, generator=gen)
        skew = torch.randn(n_sites, dim, generator=gen) * heterogeneity
        skew -= skew.mean(dim=0, keepdim=True)  # so mean(c_i) is exactly the consensus optimum
        self.targets = self.consensus + skew
        self.starts = torch.randn(n_sites, dim, generator=gen)
        self.lr = lr

    def site_learners(self) -> Sequence[Learner]:
        return [
            QuadraticLearner(
                start=self.starts[i],
                target=self.targets[i],
                consensus_target=self.consensus,
                lr=self.lr,
            )
            for i in range(len(self.targets))
        ]

    def pooled_learner(self) -> Learner:
        return QuadraticLearner(
            start=self.starts.mean(dim=0),
            target=self.consensus,
            consensus_target=self.consensus,
            lr=self.lr,
        )


def default_factory(config: SimConfig) -> LearnerFactory:
    if config.sim.problem == "quadratic":
        return QuadraticFactory(
            n_sites=config.nodes, seed=config.sim.seed, lr=min(config.learning.train.lr, 1.0)
        )
    return LanguageModelFactory(config.learning, rounds=config.sim.rounds)


def _planned(learning: LearningConfig, steps: int) -> LearningConfig:
    """Calibrated DP noise must last exactly the steps this run will take."""
    return dataclasses.replace(learning, dp=dataclasses.replace(learning.dp, planned_steps=steps))


class LanguageModelFactory:
    """gossipmed.train learners; every site (and every baseline) shares one loaded model.

    Each site plans its noise for rounds x steps_per_round steps; the centralized baseline
    runs n_sites times as many steps (on n_sites times the data), so its noise is calibrated
    for those, reaching the same epsilon budget by the last round.
    """

    def __init__(self, learning: LearningConfig, *, rounds: int) -> None:
        from gossipmed.train import load_shared_model

        site_steps = rounds * learning.train.steps_per_round
        self.learning = _planned(learning, site_steps)
        self.pooled = _planned(learning, site_steps * learning.data.n_sites)
        self.model = load_shared_model(learning, progress=False)

    def site_learners(self) -> Sequence[Learner]:
        from gossipmed.train import build_site_learners

        return build_site_learners(self.learning, model=self.model).learners

    def pooled_learner(self) -> Learner:
        from gossipmed.train import build_site_learners

        return build_site_learners(self.pooled, model=self.model, pooled=True).learners[0]


# --- sealing --------------------------------------------------------------------------------


def build_sealers(
    names: list[str], *, mode: str, edges: list[tuple[str, str]], topology: str
) -> dict[str, Sealer]:
    """One sealer per site. 'envelope' (the default) gives every simulated site a fresh
    in-memory identity and one roster of all of them, so simulated updates are signed,
    encrypted and replay-checked exactly as the daemon's are."""
    if mode == "plaintext":
        return {n: PlaintextSealer(identity=n) for n in names}
    from gossipmed.crypto import generate_identity
    from gossipmed.envelope import EnvelopeSealer
    from gossipmed.roster import Member, Roster

    identities = {n: generate_identity() for n in names}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in identities.items()
        ),
        edges=tuple(edges),
        topology=topology,
    )
    return {n: EnvelopeSealer(identity=identities[n], roster=roster) for n in names}


# --- the run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str  # gossip | local | central
    records: list[RoundRecord]
    wall_seconds: float
    states: dict[str, AdapterState]


class Simulation:
    def __init__(
        self,
        config: SimConfig,
        *,
        factory: LearnerFactory | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.factory = factory if factory is not None else default_factory(config)
        self.on_progress = on_progress
        sim = config.sim
        self.graphs = graph_schedule(
            sim.topology,
            nodes=config.nodes,
            degree=sim.degree,
            p=sim.p,
            seed=sim.seed,
            path=sim.topology_file,
        )
        if self.graphs[0].number_of_nodes() != config.nodes:
            raise ConfigError(
                f"topology has {self.graphs[0].number_of_nodes()} nodes but "
                f"data.n_sites is {config.nodes}"
            )
        self.schedule = MixingSchedule.from_graphs(self.graphs, rule=sim.mixing)
        self.names = self.schedule.sites
        self.topology: TopologySummary = summarize(sim.topology, self.graphs, rule=sim.mixing)
        self.gossip_steps = resolve_gossip_steps(sim.gossip_steps, lam2=self.topology.lambda2)
        self.faults = FaultInjector(dataclasses.replace(config.faults, seed=sim.seed))
        self.audit = ListAudit()
        self.attackers: list[str] = []

    # -- gossip ---------------------------------------------------------------------------------

    def run_gossip(
        self, *, communicate: bool = True, writer: MetricsWriter | None = None
    ) -> RunResult:
        cfg = self.config
        rounds = cfg.sim.rounds
        run_name = "gossip" if communicate else "local"
        sealers = (
            build_sealers(
                self.names,
                mode=cfg.sim.sealing,
                edges=self._union_edges(),
                topology=cfg.sim.topology,
            )
            if communicate
            else {n: PlaintextSealer(identity=n) for n in self.names}
        )
        learners = self.factory.site_learners()
        if len(learners) != len(self.names):
            raise ConfigError(
                f"the data gives {len(learners)} sites but the topology has {len(self.names)}"
            )
        peers = {
            name: Peer(
                name=name,
                learner=learners[i],
                sealer=sealers[name],
                schedule=self.schedule,
                local_steps=cfg.learning.train.steps_per_round,
                gossip_steps=self.gossip_steps if communicate else 1,
                train=cfg.sim.train,
                aggregation=cfg.sim.aggregation,
                eval_every=cfg.sim.eval_every,
                total_rounds=rounds,
                audit=self.audit,
            )
            for i, name in enumerate(self.names)
        }
        if communicate:  # codec, drift correction, attackers (issue #7)
            options = options_from_sim(cfg.sim)
            self.attackers = apply_peer_options(peers, options=options, seed=cfg.sim.seed)
        faults = self.faults if communicate else None
        records: list[RoundRecord] = []
        late: list[tuple[str, bytes]] = []
        started = time.perf_counter()
        for r in range(rounds):
            online = {n: not (faults and faults.offline(r, n)) for n in self.names}
            live = [peer for name, peer in peers.items() if online[name]]
            for peer in live:
                peer.train(r)
            for step in range(self.gossip_steps if communicate else 0):
                if step > 0:
                    for peer in live:
                        peer.mix_step(r, step - 1)
                for peer in live:
                    name = peer.name
                    for recipient, data in self._seal_or_audit(peer, r, step).items():
                        if not online[recipient] or (
                            faults and faults.dropped(r, name, recipient, step=step)
                        ):
                            continue
                        if faults and faults.late(r, name):
                            late.append((recipient, data))
                        else:
                            peers[recipient].receive(data)
            round_records = [
                peer.complete_round(r) if online[name] else peer.skip_round(r)
                for name, peer in peers.items()
            ]
            # stragglers' envelopes land after their recipients mixed: stale on arrival
            for recipient, data in late:
                peers[recipient].receive(data)
            late.clear()
            _overall, per_site = consensus_distances(
                [peers[n].learner.get_state() for n in self.names]
            )
            for rec, dist in zip(round_records, per_site, strict=True):
                final = dataclasses.replace(
                    rec, consensus_distance=dist, consensus_scope="global", run=run_name
                )
                records.append(final)
                if writer is not None:
                    writer.write(final)
            if self.on_progress:
                self.on_progress(run_name, r + 1, rounds)
        wall = time.perf_counter() - started
        states = {n: _snapshot(p.learner.get_state()) for n, p in peers.items()}
        self._last_learners = {n: p.learner for n, p in peers.items()}
        return RunResult(name=run_name, records=records, wall_seconds=wall, states=states)

    def _seal_or_audit(self, peer: Peer, round: int, step: int) -> dict[str, bytes]:
        """A site whose state overflowed (e.g. fed by a scaling attacker) cannot seal it: it
        sends nothing, its neighbours count it as silent, and the run goes on to record the
        divergence instead of stopping (a daemon in that state stops with the error)."""
        try:
            return peer.seal_outgoing(round, step)
        except NonFiniteTensor as exc:
            self.audit.record("non_finite_state", site=peer.name, round=round, detail=str(exc))
            return {}

    def _union_edges(self) -> list[tuple[str, str]]:
        edges = {
            tuple(sorted((u, v)))
            for rows in self.schedule.rows
            for u, row in rows.items()
            for v in row
            if u != v
        }
        return sorted((a, b) for a, b in edges)

    # -- centralized baseline -------------------------------------------------------------------

    def run_central(self, *, writer: MetricsWriter | None = None) -> RunResult:
        """Pooled data, the same total steps per round as all sites together, same DP."""
        cfg = self.config
        learner = self.factory.pooled_learner()
        steps = cfg.learning.train.steps_per_round * cfg.nodes
        records = []
        started = time.perf_counter()
        epsilon = 0.0
        for r in range(cfg.sim.rounds):
            t0 = time.perf_counter()
            stats = learner.train_round(steps=steps) if cfg.sim.train else None
            epsilon = stats.epsilon if stats else epsilon
            last = r == cfg.sim.rounds - 1
            ev = learner.evaluate() if last or (r + 1) % cfg.sim.eval_every == 0 else None
            records.append(
                RoundRecord(
                    round=r,
                    site="central",
                    train_loss=stats.train_loss if stats else None,
                    eval_loss=ev.loss if ev else None,
                    accuracy=ev.accuracy if ev else None,
                    consensus_distance=0.0,
                    epsilon=epsilon,
                    bytes_sent=0,
                    bytes_received=0,
                    neighbours_heard=0,
                    seconds=time.perf_counter() - t0,
                    consensus_scope="global",
                    trained=stats is not None,
                    run="central",
                )
            )
            if writer is not None:
                writer.write(records[-1])
            if self.on_progress:
                self.on_progress("central", r + 1, cfg.sim.rounds)
        self._last_learners = {"central": learner}
        return RunResult(
            name="central",
            records=records,
            wall_seconds=time.perf_counter() - started,
            states={"central": _snapshot(learner.get_state())},
        )


def _snapshot(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().clone() for k, v in state.items()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def save_adapters(learners: Mapping[str, Learner], directory: Path) -> None:
    """Final per-site adapters: PEFT format when the learner can write it, else safetensors."""
    for name, learner in learners.items():
        target = directory / name
        saver = getattr(learner, "save_adapter", None)
        if callable(saver):
            saver(target)
        else:
            save_state(target, learner.get_state(), {"site": name})


def _fresh_writer(path: Path) -> MetricsWriter:
    path.unlink(missing_ok=True)
    return MetricsWriter(path)


def run_simulation(
    config: SimConfig,
    *,
    out_dir: Path,
    factory: LearnerFactory | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run gossip (and the baselines if asked), write the run directory, return the summary."""
    from node.inspect_run import json_safe, summarize_run

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "config.toml", to_toml(config.to_mapping()).encode())
    sim = Simulation(config, factory=factory, on_progress=on_progress)
    # records stream to disk round by round: a long run can be inspected while it goes
    with _fresh_writer(out_dir / METRICS_FILE) as writer:
        results = [sim.run_gossip(writer=writer)]
        writer.sync()
    save_adapters(sim._last_learners, out_dir / "adapters")
    if config.sim.baselines:
        with _fresh_writer(out_dir / BASELINE_DIRS["local"] / METRICS_FILE) as writer:
            results.append(sim.run_gossip(communicate=False, writer=writer))
            writer.sync()
        with _fresh_writer(out_dir / BASELINE_DIRS["central"] / METRICS_FILE) as writer:
            results.append(sim.run_central(writer=writer))
            writer.sync()
    sim._last_learners = {}
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
            "wall_seconds": {r.name: r.wall_seconds for r in results},
            "seconds_per_round": {r.name: r.wall_seconds / config.sim.rounds for r in results},
            "peak_rss_mib": peak_rss_mib(),
            "audit": audit_counts,
            "sites": sim.names,
            "robustness": robustness_summary(
                options=options_from_sim(config.sim),
                aggregation=config.sim.aggregation,
                attackers=sim.attackers,
                records=results[0].records,
            ),
        }
    )
    atomic_write_json(out_dir / "summary.json", json_safe(summary))
    return summary
