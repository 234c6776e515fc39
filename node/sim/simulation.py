"""`gossipmed simulate`: many sites in one process, the daemon's exact round logic.

Each site is a `node.round.peer.Peer` composed by node.round.builder from the same `[gossip]`
choices a daemon reads; the simulator drives them in lockstep over an in-memory network with
simulated time: a dropped message never arrives, an offline site skips the round, and a
straggler whose delay exceeds the round timeout is heard one round late (and rejected as
stale). Every decision comes from the seed, so a run is reproducible -- including the DP
noise: the simulator's randomness is seeded on purpose and is never what a real site uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState, Learner
from gossipmed.metrics import LazyStates, MetricsWriter, RoundRecord, consensus_distances
from gossipmed.mixing.secagg import MIN_THRESHOLD, check_threshold
from gossipmed.wire.plaintext import PlaintextSealer
from gossipmed.wire.tensors import NonFiniteTensor
from gossipmed.wire.update import Sealer
from node.round.audit import ListAudit
from node.round.builder import RoundPlan, build_peer
from node.round.config import GossipConfig
from node.round.peer import Peer
from node.sim.attacks import attack_learner, attack_sealer, choose_attackers
from node.sim.config import SimConfig
from node.sim.factories import LearnerFactory, default_factory
from node.sim.faults import FaultInjector
from node.sim.secure import SecureNetwork
from topology.schedule import MixingSchedule
from topology.summary import TopologySummary, summarize

ProgressCallback = Callable[[str, int, int], None]
"""(run name, rounds done, rounds total)"""


def build_sealers(
    names: list[str], *, mode: str, edges: list[tuple[str, str]], topology: str
) -> dict[str, Sealer]:
    """One sealer per site. 'envelope' (the default) gives every simulated site a fresh
    in-memory identity and one roster of all of them, so simulated updates are signed,
    encrypted and replay-checked exactly as the daemon's are."""
    if mode == "plaintext":
        return {n: PlaintextSealer(identity=n) for n in names}
    from gossipmed.consortium.crypto import generate_identity
    from gossipmed.consortium.member import Member
    from gossipmed.consortium.roster import Roster
    from gossipmed.wire.envelope import EnvelopeSealer

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


@dataclass
class RunResult:
    name: str  # gossip | local | central
    records: list[RoundRecord]
    wall_seconds: float
    states: dict[str, AdapterState]
    learners: dict[str, Learner]


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
        self.secure_network: SecureNetwork | None = None
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

    # -- gossip ---------------------------------------------------------------------------------

    def build_peers(self, *, communicate: bool = True) -> dict[str, Peer]:
        """Every site's peer, composed once (attackers' learners and sealers included)."""
        cfg = self.config
        learners = self.factory.site_learners()
        if len(learners) != len(self.names):
            raise ConfigError(
                f"the data gives {len(learners)} sites but the topology has {len(self.names)}"
            )
        if communicate:
            sealers = build_sealers(
                self.names,
                mode=cfg.sim.sealing,
                edges=self.schedule.edges(),
                topology=cfg.sim.topology,
            )
            gossip = cfg.gossip
        else:  # local-only: nobody hears anybody, so codec and drift play no part
            sealers = {n: PlaintextSealer(identity=n) for n in self.names}
            gossip = GossipConfig(round_timeout_s=cfg.gossip.round_timeout_s)
        plan = RoundPlan(
            local_steps=cfg.learning.train.steps_per_round,
            gossip_steps=self.gossip_steps if communicate else 1,
            train=cfg.sim.train,
            eval_every=cfg.sim.eval_every,
            total_rounds=cfg.sim.rounds,
            secure=self.secure and communicate,
        )
        if plan.secure:
            digest = hashlib.blake2b(
                json.dumps(cfg.to_mapping(), sort_keys=True, default=str).encode(),
                digest_size=32,
            )
            self.secure_network = SecureNetwork(
                sites=tuple(self.names),
                roster_hash=digest.digest(),
                fixed_point=cfg.consortium.envelope,
            )
        peers = {}
        for i, name in enumerate(self.names):
            learner, sealer = learners[i], sealers[name]
            if communicate and name in self.attackers:
                attack_learner(learner, config=cfg.attack)
                index = self.attackers.index(name)
                sealer = attack_sealer(sealer, config=cfg.attack, index=index, seed=cfg.sim.seed)
            peers[name] = build_peer(
                name=name,
                learner=learner,
                sealer=sealer,
                schedule=self.schedule,
                plan=plan,
                gossip=gossip,
                audit=self.audit,
            ).peer
        return peers

    def run_gossip(
        self, *, communicate: bool = True, writer: MetricsWriter | None = None
    ) -> RunResult:
        rounds = self.config.sim.rounds
        run_name = "gossip" if communicate else "local"
        peers = self.build_peers(communicate=communicate)
        faults = self.faults if communicate else None
        records: list[RoundRecord] = []
        late: list[tuple[str, bytes]] = []
        started = time.perf_counter()
        for r in range(rounds):
            online = {n: not (faults and faults.offline(r, n)) for n in self.names}
            live = [peer for name, peer in peers.items() if online[name]]
            for peer in live:
                peer.train(r)
            if communicate and self.secure:
                self._secure_exchange(r, live, online)
            for step in range(self.gossip_steps if communicate and not self.secure else 0):
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
                LazyStates([peers[n].learner.get_state for n in self.names])
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
        return RunResult(
            name=run_name,
            records=records,
            wall_seconds=time.perf_counter() - started,
            states={n: _snapshot(p.learner.get_state()) for n, p in peers.items()},
            learners={n: p.learner for n, p in peers.items()},
        )

    def _secure_exchange(self, round: int, live: list[Peer], online: Mapping[str, bool]) -> None:
        """Every online site's secure exchange (node.sim.secure): faults become drops."""
        assert self.secure_network is not None
        faults = self.faults

        def dropped(contributor: str, receiver: str) -> bool:
            return faults.dropped(round, contributor, receiver) or faults.late(round, contributor)

        outcomes = self.secure_network.exchange(
            round=round,
            schedule=self.schedule,
            states={peer.name: peer.secure_input(round) for peer in live},
            dropped=dropped,
            audit=self.audit.record,
        )
        for peer in live:
            peer.accept_secure(round, outcomes[peer.name])

    def _seal_or_audit(self, peer: Peer, round: int, step: int) -> dict[str, bytes]:
        """A site whose state overflowed (e.g. fed by a scaling attacker) cannot seal it: it
        sends nothing, its neighbours count it as silent, and the run goes on to record the
        divergence instead of stopping."""
        try:
            return peer.seal_outgoing(round, step)
        except NonFiniteTensor as exc:
            self.audit.record("non_finite_state", site=peer.name, round=round, detail=str(exc))
            return {}

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
        return RunResult(
            name="central",
            records=records,
            wall_seconds=time.perf_counter() - started,
            states={"central": _snapshot(learner.get_state())},
            learners={"central": learner},
        )


def _snapshot(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().clone() for k, v in state.items()}
