"""A site host: some of a simulation's sites, their peers and one shared base, in one process.

The in-process engine has one host with every site; the Ray engine has one per actor. A host
rebuilds what it needs from the config alone (graph schedule, partition, learners, attackers'
poisoning), so every host of a run agrees without shipping models or data; the driver sends
it only key material and the bytes its sites receive. Every method takes and returns plain
data (names, rounds, sealed bytes, records), so a driver may call it in this process or in
another; the phases are the `Peer` phases, in the order node.sim.engine.rounds calls them.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gossipmed.consortium.crypto import Identity
from gossipmed.consortium.roster import Roster
from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState, Learner
from gossipmed.metrics import RoundRecord
from gossipmed.mixing.secagg.harness import PartySet, Wire
from gossipmed.wire.plaintext import PlaintextSealer
from gossipmed.wire.tensors import NonFiniteTensor
from gossipmed.wire.update import Sealer
from node.round.audit import ListAudit
from node.round.builder import RoundPlan, build_peer
from node.round.config import GossipConfig
from node.round.peer import Peer
from node.sim.attacks import attack_learner, attack_sealer
from node.sim.config import SimConfig
from node.sim.engine.consensus import BandSums, band_sums, distances_to
from node.sim.factories import LearnerFactory, default_factory
from node.sim.secure import Schema, SecureSites, no_fresh_outcomes
from topology.schedule import MixingSchedule

SentWire = tuple[str, str, bytes]
"""(sender, recipient, sealed bytes)"""


@dataclass(frozen=True)
class HostSpec:
    """What a host is told once: the run's config and its share of the sites."""

    config: SimConfig
    sites: tuple[str, ...]
    gossip_steps: int
    attackers: tuple[str, ...]
    torch_threads: int | None = None


@dataclass(frozen=True)
class RunKeys:
    """One run's key material for a host's sites, made by the driver from the OS CSPRNG:
    sealing identities (None: plaintext) with the roster of every site, and secure
    aggregation's signing keys (None: off) with every site's public key."""

    identities: Mapping[str, Identity] | None = None
    roster: Roster | None = None
    signing_seeds: Mapping[str, bytes] | None = None
    verify_keys: Mapping[str, bytes] | None = None
    roster_hash: bytes = b""


class SiteHost:
    def __init__(self, spec: HostSpec, *, factory: LearnerFactory | None = None) -> None:
        if spec.torch_threads is not None:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.config = spec.config
        rule = self.config.consortium.mixing
        self.schedule = MixingSchedule.from_graphs(self.config.graphs(), rule=rule)
        self.names = list(self.schedule.sites)
        self.sites = spec.sites
        self.factory = factory if factory is not None else default_factory(self.config)
        self.audit = ListAudit()
        self.peers: dict[str, Peer] = {}
        self.secure: SecureSites | None = None
        self.parties: PartySet | None = None

    def where(self) -> dict[str, Any]:
        """Where this host runs (for summary.json)."""
        out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        ray = sys.modules.get("ray")  # never imported here: a later local Ray reads env at import
        if ray is not None and ray.is_initialized():
            context = ray.get_runtime_context()
            out["node"] = context.get_node_id()
            out["node_ip"] = ray.util.get_node_ip_address()
        return out

    # -- a run: fresh learners, peers and keys -----------------------------------------------

    def start(self, *, communicate: bool, keys: RunKeys) -> None:
        cfg = self.config
        learners = self._learners()
        gossip = (
            cfg.gossip if communicate else GossipConfig(round_timeout_s=cfg.gossip.round_timeout_s)
        )
        plan = RoundPlan(
            local_steps=cfg.learning.train.steps_per_round,
            gossip_steps=self.spec.gossip_steps if communicate else 1,
            train=cfg.sim.train,
            eval_every=cfg.sim.eval_every,
            total_rounds=cfg.sim.rounds,
            secure=cfg.consortium.secure_aggregation and communicate,
        )
        self.audit = ListAudit()
        self.peers = {}
        for name in self.sites:
            learner = learners[name]
            sealer = self._sealer(name, keys)
            if communicate and name in self.spec.attackers:
                attack_learner(learner, config=cfg.attack)
                sealer = attack_sealer(
                    sealer,
                    config=cfg.attack,
                    index=self.spec.attackers.index(name),
                    seed=cfg.sim.seed,
                )
            self.peers[name] = build_peer(
                name=name,
                learner=learner,
                sealer=sealer,
                schedule=self.schedule,
                plan=plan,
                gossip=gossip,
                audit=self.audit,
            ).peer
        self.secure = None
        if plan.secure:
            from nacl.signing import SigningKey

            assert keys.signing_seeds is not None and keys.verify_keys is not None
            self.secure = SecureSites(
                sites=self.sites,
                roster_hash=keys.roster_hash,
                fixed_point=cfg.consortium.envelope,
                keys={s: SigningKey(keys.signing_seeds[s]) for s in self.sites},
                public=dict(keys.verify_keys),
            )

    def _learners(self) -> dict[str, Learner]:
        """Fresh learners of this host's sites (the i-th site of the topology gets the data's
        i-th); only those, where the factory can build a share."""
        index = {n: i for i, n in enumerate(self.names)}
        wanted = [index[n] for n in self.sites]
        share = getattr(self.factory, "learners_for", None)
        if share is not None:
            by_index: Mapping[int, Learner] = share(wanted)
        else:
            every = self.factory.site_learners()
            if len(every) != len(self.names):
                raise ConfigError(
                    f"the data gives {len(every)} sites but the topology has {len(self.names)}"
                )
            by_index = dict(enumerate(every))
        return {n: by_index[index[n]] for n in self.sites}

    def _sealer(self, name: str, keys: RunKeys) -> Sealer:
        if keys.identities is None or keys.roster is None:
            return PlaintextSealer(identity=name)
        from gossipmed.wire.envelope import EnvelopeSealer

        return EnvelopeSealer(identity=keys.identities[name], roster=keys.roster)

    # -- the peer phases, for this host's online sites --------------------------------------

    def train(self, *, round: int, online: Sequence[str]) -> None:
        for name in self._mine(online):
            self.peers[name].train(round)

    def seal(self, *, round: int, step: int, online: Sequence[str]) -> list[SentWire]:
        """Every online site's sealed state for exchange `step`. A site whose state overflowed
        (e.g. fed by a scaling attacker) cannot seal it: it sends nothing, its neighbours count
        it as silent, and the run goes on to record the divergence instead of stopping."""
        out: list[SentWire] = []
        for name in self._mine(online):
            try:
                sealed = self.peers[name].seal_outgoing(round, step)
            except NonFiniteTensor as exc:
                self.audit.record("non_finite_state", site=name, round=round, detail=str(exc))
                continue
            out += [(name, recipient, data) for recipient, data in sealed.items()]
        return out

    def deliver(self, *, wires: Sequence[tuple[str, bytes]]) -> None:
        for recipient, data in wires:
            self.peers[recipient].receive(data)

    def mix_step(self, *, round: int, step: int, online: Sequence[str]) -> None:
        for name in self._mine(online):
            self.peers[name].mix_step(round, step)

    def complete(self, *, round: int, online: Sequence[str]) -> list[RoundRecord]:
        """Every site's record of `round`, in host order (offline sites skip it)."""
        up = frozenset(online)
        return [
            self.peers[n].complete_round(round) if n in up else self.peers[n].skip_round(round)
            for n in self.sites
        ]

    def consensus_sums(self) -> tuple[int, BandSums, int]:
        """(sites, the exact sum of their states, the size of a state)."""
        states = [self.peers[n].learner.get_state() for n in self.sites]
        count, sums = band_sums(states)
        return count, sums, sum(t.numel() for t in states[0].values()) if states else 0

    def consensus_distances(self, *, mean: torch.Tensor) -> list[float]:
        return distances_to((self.peers[n].learner.get_state() for n in self.sites), mean)

    def audit_events(self) -> list[dict[str, Any]]:
        events, self.audit.events = self.audit.events, []
        return events

    def finish(self) -> tuple[dict[str, AdapterState], dict[str, dict[str, bytes]]]:
        """The sites' final states and adapter files ({site: {relative path: bytes}}): the
        driver writes them, wherever this host runs."""
        states = {
            n: {k: v.detach().clone() for k, v in p.learner.get_state().items()}
            for n, p in self.peers.items()
        }
        return states, {n: adapter_files(p.learner) for n, p in self.peers.items()}

    # -- secure aggregation: this host's parties, phase by phase -----------------------------

    def secure_open(self, *, round: int, online: Sequence[str]) -> tuple[list[str], Schema | None]:
        assert self.secure is not None
        states = {n: self.peers[n].secure_input(round) for n in self._mine(online)}
        return self.secure.open(round, states)

    def secure_parties(
        self,
        *,
        round: int,
        online: Sequence[str],
        fresh: Sequence[str],
        schema: Schema,
        dropped: Sequence[tuple[str, str]],
    ) -> None:
        assert self.secure is not None
        self.parties = self.secure.parties(
            round=round,
            schedule=self.schedule,
            online=online,
            fresh=fresh,
            schema=schema,
            dropped=frozenset(dropped),
            audit=self.audit.record,
        )

    def secure_advertise(self) -> list[Wire]:
        assert self.parties is not None
        return self.parties.advertise()

    def secure_aggregate(self, *, wires: Sequence[Wire]) -> tuple[list[Wire], bool]:
        assert self.parties is not None
        return self.parties.aggregate(wires)

    def secure_contribute(self, *, wires: Sequence[Wire]) -> list[Wire]:
        assert self.parties is not None
        return self.parties.contribute(wires)

    def secure_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        assert self.parties is not None
        return self.parties.sent, self.parties.received

    def secure_accept(
        self,
        *,
        round: int,
        online: Sequence[str],
        sent: Mapping[str, int],
        received: Mapping[str, int],
        ran: bool,
    ) -> None:
        """Hand each online site its own exchange's outcome (`ran`: False when nobody
        trained this round, so no exchange ran anywhere)."""
        assert self.secure is not None
        mine = self._mine(online)
        if ran:
            outcomes = self.secure.outcomes(
                round, sent=sent, received=received, audit=self.audit.record
            )
        else:
            outcomes = no_fresh_outcomes(mine)
        self.parties = None
        for name in mine:
            self.peers[name].accept_secure(round, outcomes[name])

    def _mine(self, names: Sequence[str]) -> list[str]:
        up = frozenset(names)
        return [n for n in self.sites if n in up]


def adapter_files(learner: Learner) -> dict[str, bytes]:
    """A learner's adapter in its own format, as {relative path: bytes}."""
    with tempfile.TemporaryDirectory(prefix="gossipmed-adapter-") as tmp:
        root = Path(tmp) / "adapter"
        learner.save_adapter(root)
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
