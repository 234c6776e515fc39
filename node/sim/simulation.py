"""`gossipmed simulate`: many sites, the daemon's exact round logic, in this process or in Ray.

Each site is a `node.round.peer.Peer` composed by node.round.builder from the same `[gossip]`
choices a daemon reads; the driver runs them in lockstep (node.sim.engine.rounds) over site
hosts -- one in this process (`[sim] engine = "inprocess"`, the default) or Ray actors that
each hold several sites (`"ray"`, node.sim.engine.ray_group) -- with simulated time: a
dropped message never arrives, an offline site skips the round, and a straggler whose delay
exceeds the round timeout is heard one round late (and rejected as stale). Every decision
comes from the seed, so a run is reproducible, on either engine and for any number of
workers -- including the DP noise: the simulator's randomness is seeded on purpose and is
never what a real site uses. Only key material is fresh (the OS CSPRNG), as a real site's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState
from gossipmed.metrics import MetricsWriter, RoundRecord
from gossipmed.mixing.secagg import MIN_THRESHOLD, check_threshold
from gossipmed.wire.plaintext import PlaintextSealer
from gossipmed.wire.update import Sealer
from node.round.audit import ListAudit
from node.round.peer import Peer
from node.sim.attacks import choose_attackers
from node.sim.config import SimConfig, agreed_mapping
from node.sim.engine.group import HostGroup, LocalGroup
from node.sim.engine.host import HostSpec, RunKeys, SiteHost, adapter_files
from node.sim.engine.rounds import ProgressCallback, RoundLoop, run_rounds
from node.sim.factories import LearnerFactory, default_factory
from node.sim.faults import FaultInjector
from topology.schedule import MixingSchedule
from topology.summary import TopologySummary, summarize

__all__ = ["ProgressCallback", "RunResult", "Simulation", "build_sealers", "run_keys"]


def run_keys(
    names: list[str],
    *,
    sealing: str,
    secure: bool,
    edges: list[tuple[str, str]],
    topology: str,
    roster_hash: bytes,
) -> RunKeys:
    """One run's key material, from the OS CSPRNG. 'envelope' sealing (the default) gives
    every simulated site a fresh identity and one roster of all of them, so simulated updates
    are signed, encrypted and replay-checked exactly as the daemon's are; secure aggregation
    gives each a fresh signing key."""
    import os

    identities = roster = None
    if sealing == "envelope":
        from gossipmed.consortium.crypto import generate_identity
        from gossipmed.consortium.member import Member
        from gossipmed.consortium.roster import Roster

        identities = {n: generate_identity() for n in names}
        roster = Roster(
            members=tuple(
                Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
                for n, i in identities.items()
            ),
            edges=tuple(edges),
            topology=topology,
        )
    seeds = verify = None
    if secure:
        from nacl.signing import SigningKey

        seeds = {n: os.urandom(32) for n in names}
        verify = {n: bytes(SigningKey(seed).verify_key) for n, seed in seeds.items()}
    return RunKeys(
        identities=identities,
        roster=roster,
        signing_seeds=seeds,
        verify_keys=verify,
        roster_hash=roster_hash,
    )


def build_sealers(
    names: list[str], *, mode: str, edges: list[tuple[str, str]], topology: str
) -> dict[str, Sealer]:
    """One sealer per site over one run's fresh keys (what a single host holds): for tests and
    tools that drive peers by hand."""
    keys = run_keys(
        names, sealing=mode, secure=False, edges=edges, topology=topology, roster_hash=b""
    )
    if keys.identities is None or keys.roster is None:
        return {n: PlaintextSealer(identity=n) for n in names}
    from gossipmed.wire.envelope import EnvelopeSealer

    return {n: EnvelopeSealer(identity=keys.identities[n], roster=keys.roster) for n in names}


def keys_for(keys: RunKeys, sites: tuple[str, ...]) -> RunKeys:
    """A host's share: its own sites' secrets, everyone's public keys."""
    return dataclasses.replace(
        keys,
        identities={s: keys.identities[s] for s in sites} if keys.identities else None,
        signing_seeds={s: keys.signing_seeds[s] for s in sites} if keys.signing_seeds else None,
    )


@dataclass
class RunResult:
    name: str  # gossip | local | central
    records: list[RoundRecord]
    wall_seconds: float
    states: dict[str, AdapterState]
    adapters: dict[str, dict[str, bytes]]
    """Each site's final adapter files, {relative path: bytes}, in its learner's format."""


class Simulation:
    def __init__(
        self,
        config: SimConfig,
        *,
        factory: LearnerFactory | None = None,
        on_progress: ProgressCallback | None = None,
        hosts: Callable[[HostSpec], HostGroup] | None = None,
    ) -> None:
        """`hosts` builds the site hosts from the spec of all sites (default: from
        `[sim] engine`)."""
        self.config = config
        sim = config.sim
        if factory is not None and sim.engine != "inprocess":
            raise ConfigError("a custom learner factory runs only with the inprocess engine")
        self._factory = factory
        self.on_progress = on_progress
        self.graphs = config.graphs()
        if self.graphs[0].number_of_nodes() != config.nodes:
            raise ConfigError(
                f"topology has {self.graphs[0].number_of_nodes()} nodes but "
                f"data.n_sites is {config.nodes}"
            )
        mixing = config.consortium.mixing
        self.schedule = MixingSchedule.from_graphs(self.graphs, rule=mixing)
        self.names = self.schedule.sites
        self.topology: TopologySummary = summarize(sim.topology, self.graphs, rule=mixing)
        from gossipmed.consortium.settings import resolve_gossip_steps

        self.gossip_steps = resolve_gossip_steps(
            config.consortium.gossip_steps, lam2=self.topology.lambda2
        )
        self.faults = FaultInjector(
            dataclasses.replace(config.faults, seed=sim.seed),
            round_timeout=config.gossip.round_timeout_s,
        )
        self.audit = ListAudit()
        self.secure = config.consortium.secure_aggregation
        if self.secure:
            short = sorted(
                {
                    site
                    for r in range(len(self.schedule.rows))
                    for site in check_threshold(
                        {n: sorted(self.schedule.neighbours(r, n)) for n in self.names}
                    )
                }
            )
            if short:
                raise ConfigError(
                    f"secure aggregation needs at least {MIN_THRESHOLD} neighbours per site; "
                    f"too few at: {', '.join(short)}"
                )
        self.attackers = (
            choose_attackers(self.names, count=config.attack.attackers, seed=sim.seed)
            if config.attack.active
            else []
        )
        self._make_hosts = hosts
        self._group: HostGroup | None = None

    @property
    def factory(self) -> LearnerFactory:
        """The driver's own learners (the centralized baseline; every site, in process)."""
        if self._factory is None:
            self._factory = default_factory(self.config)
        return self._factory

    def hosts(self) -> HostGroup:
        """The site hosts, started on first use and kept for every run (close() ends them)."""
        if self._group is None:
            spec = HostSpec(
                config=self.config,
                sites=tuple(self.names),
                gossip_steps=self.gossip_steps,
                attackers=tuple(self.attackers),
            )
            if self._make_hosts is not None:
                self._group = self._make_hosts(spec)
            elif self.config.sim.engine == "ray":
                from node.sim.engine.ray_group import RayGroup

                self._group = RayGroup(spec, names=self.names)
            else:
                self._group = LocalGroup([SiteHost(spec, factory=self.factory)])
        return self._group

    def engine(self) -> dict[str, Any]:
        """The engine, its workers and where each site ran (summary.json)."""
        return self.hosts().describe()

    def close(self, *, clean: bool = True) -> None:
        """Stop the hosts (Ray actors, and a Ray this run started); after a clean run a Ray
        engine may keep its actors for this driver's next simulation."""
        group, self._group = self._group, None
        if group is not None:
            group.close(reuse=clean)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(clean=exc_type is None)

    # -- gossip ---------------------------------------------------------------------------------

    def build_peers(self, *, communicate: bool = True) -> dict[str, Peer]:
        """Every site's peer, composed once in this process (attackers' learners and sealers
        included) over fresh keys: what a run's hosts hold, for tests and tools that drive the
        phases by hand."""
        spec = HostSpec(
            config=self.config,
            sites=tuple(self.names),
            gossip_steps=self.gossip_steps,
            attackers=tuple(self.attackers),
        )
        host = SiteHost(spec, factory=self.factory)
        keys = run_keys(
            self.names,
            sealing=self.config.sim.sealing if communicate else "plaintext",
            secure=self.secure and communicate,
            edges=self.schedule.edges(),
            topology=self.config.sim.topology,
            roster_hash=self.roster_hash(),
        )
        host.start(communicate=communicate, keys=keys)
        return dict(host.peers)

    def roster_hash(self) -> bytes:
        """What secure aggregation's instances are bound to: the run's config, without the
        keys that only say where it runs (every engine gives the same exchanges)."""
        digest = hashlib.blake2b(
            json.dumps(agreed_mapping(self.config), sort_keys=True, default=str).encode(),
            digest_size=32,
        )
        return digest.digest()

    def run_gossip(
        self, *, communicate: bool = True, writer: MetricsWriter | None = None
    ) -> RunResult:
        cfg = self.config
        run_name = "gossip" if communicate else "local"
        group = self.hosts()
        keys = run_keys(
            self.names,
            sealing=cfg.sim.sealing if communicate else "plaintext",
            secure=self.secure and communicate,
            edges=self.schedule.edges(),
            topology=cfg.sim.topology,
            roster_hash=self.roster_hash(),
        )
        group.call(
            "start",
            [{"communicate": communicate, "keys": keys_for(keys, sites)} for sites in group.sites],
        )
        loop = RoundLoop(
            names=list(self.names),
            schedule=self.schedule,
            rounds=cfg.sim.rounds,
            gossip_steps=self.gossip_steps,
            secure=self.secure,
            faults=self.faults if communicate else None,
            run_name=run_name,
        )
        started = time.perf_counter()
        records, _ = run_rounds(group, loop, writer=writer, on_progress=self.on_progress)
        wall = time.perf_counter() - started
        for events in group.call("audit_events"):
            self.audit.events.extend(events)
        states: dict[str, AdapterState] = {}
        adapters: dict[str, dict[str, bytes]] = {}
        for part_states, part_adapters in group.call("finish"):
            states.update(part_states)
            adapters.update(part_adapters)
        return RunResult(
            name=run_name,
            records=records,
            wall_seconds=wall,
            states={n: states[n] for n in self.names},
            adapters={n: adapters[n] for n in self.names},
        )

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
                    accuracy_norm=ev.accuracy_norm if ev else None,
                    eval_perplexity=ev.perplexity if ev else None,
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
        return RunResult(
            name="central",
            records=records,
            wall_seconds=time.perf_counter() - started,
            states={"central": _snapshot(learner.get_state())},
            adapters={"central": adapter_files(learner)},
        )


def _snapshot(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().clone() for k, v in state.items()}
