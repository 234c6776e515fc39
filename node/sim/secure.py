"""The simulator's secure exchange: every online site's instance over the graph.

The same state machines as the daemon (gossipmed.mixing.secagg Aggregator and Contributor),
driven by the one phase loop (gossipmed.mixing.secagg.harness.run_phases), every message
through its byte encoding and the bounded parser. `SecureSites` is the part of it that lives
with some sites (their signing keys, contribution guards, suspect searches, and the parties
of this round's exchanges); a simulation engine keeps one per host and routes the bytes
between them. `SecureNetwork` is every site in one process (tests, benchmarks). The
simulator's faults map to protocol drops:

- an offline site runs no instance and contributes to none (silent from the first phase);
- a dropped or late update becomes a contributor that shared its keys and then went silent
  before its masked input (silent from Phase.MASK), so its pairwise masks are rebuilt from
  the survivors' shares: the unmask phase's reconstruction path;
- a site whose state is not finite (or that would reuse an instance) does not contribute;
- a site that completed no training step this round (state None) neither contributes nor
  aggregates: the same ContributionGuard ticket as the daemon's (fresh training only).

A receiver whose instance ends below the threshold (or with a sum out of range) gets no sum:
its exchange is skipped, audited, and it keeps its own state. A receiver whose sums fail the
public bounds searches for the contributor responsible, at most one exclusion per exchange
(gossipmed.mixing.secagg.suspects, suspects drawn from the OS CSPRNG unless `suspect_rng` is
given), and audits the one it names. Bytes are the protocol messages' encodings (no envelope
framing), counted for their sender and their recipient.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from nacl.signing import SigningKey

from gossipmed.errors import GossipmedError
from gossipmed.mixing.secagg import (
    Aggregator,
    ContributionGuard,
    Contributor,
    ExchangeAborted,
    FixedPoint,
    InstanceConfig,
    Phase,
    instance_config,
)
from gossipmed.mixing.secagg.envelope import NormEnvelope, resolve
from gossipmed.mixing.secagg.harness import PartySet, run_phases
from gossipmed.mixing.secagg.suspects import SuspectSearch
from node.round.secure_mix import SecureOutcome
from node.round.secure_session import NOT_FRESH
from topology.schedule import MixingSchedule

Drop = Callable[[str, str], bool]
"""(contributor, receiver) -> whether the contributor's masked input is lost (or late)."""
Schema = dict[str, tuple[int, ...]]
Audit = Callable[..., None]


@dataclass
class SecureSites:
    """The secure-aggregation side of the sites one place holds, for a whole run: their
    private signing keys, every site's public key, their guards and (as receivers) their
    suspect searches. Each round: `open`, then `parties` (run them with the others'), then
    `outcomes`."""

    sites: tuple[str, ...]
    roster_hash: bytes
    fixed_point: FixedPoint | NormEnvelope
    keys: dict[str, SigningKey]
    public: dict[str, bytes]
    guards: dict[str, ContributionGuard] = field(default_factory=dict)
    searches: dict[str, SuspectSearch] = field(default_factory=dict)
    suspect_rng: random.Random | None = None  # tests only; None: the OS CSPRNG
    _fresh: dict[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    _skipped: dict[str, SecureOutcome] = field(default_factory=dict)
    _parties: PartySet | None = None

    def __post_init__(self) -> None:
        for s in self.sites:
            self.guards.setdefault(s, ContributionGuard())

    def open(
        self, round: int, states: Mapping[str, Mapping[str, torch.Tensor] | None]
    ) -> tuple[list[str], Schema | None]:
        """Note who trained this round (the guard's ticket); returns those sites and the
        state schema (None when none did)."""
        self._fresh = {s: v for s, v in states.items() if v is not None}
        for s in self._fresh:
            self.guards[s].note_trained(round)
        first = next(iter(self._fresh.values()), None)
        schema = {k: tuple(t.shape) for k, t in first.items()} if first is not None else None
        return sorted(self._fresh), schema

    def parties(
        self,
        *,
        round: int,
        schedule: MixingSchedule,
        online: Collection[str],
        fresh: Collection[str],
        schema: Schema,
        dropped: Collection[tuple[str, str]],
        audit: Audit,
    ) -> PartySet:
        """This place's parties of every online receiver's exchange: the aggregators of its
        own receivers and its fresh sites' contributors to anyone's. `dropped` holds
        (contributor, receiver) pairs whose masked input is lost."""
        fixed_point = resolve(self.fixed_point, sum(torch.Size(s).numel() for s in schema.values()))
        fresh_set = frozenset(fresh)
        configs: dict[str, InstanceConfig] = {}
        self._skipped = {}
        for receiver in sorted(online):
            mine = receiver in self.sites
            if receiver not in fresh_set or (mine and not self.guards[receiver].fresh_for(round)):
                if mine:
                    self._skipped[receiver] = SecureOutcome(skipped=NOT_FRESH)
                continue
            neighbours = sorted(schedule.neighbours(round, receiver))
            if not mine and not any(j in self._fresh for j in neighbours):
                continue
            row = schedule.row(round, receiver)
            try:
                configs[receiver] = instance_config(
                    receiver=receiver,
                    neighbours=neighbours,
                    weights={j: row[j] for j in neighbours},
                    sign_keys=self.public,
                    schema=schema,
                    roster_hash=self.roster_hash,
                    round=round,
                    fixed_point=fixed_point,
                )
            except GossipmedError as exc:
                if mine:
                    self._skipped[receiver] = SecureOutcome(skipped=f"no instance: {exc}")
        aggregators: dict[str, Aggregator] = {}
        for receiver, config in configs.items():
            if receiver in self.sites:
                search = self.searches.setdefault(receiver, SuspectSearch(rng=self.suspect_rng))
                exclude = search.exclusion(config.contributors, config.threshold)
                aggregators[receiver] = Aggregator(config, exclude=exclude)
        contributors: dict[tuple[str, str], Contributor] = {}
        silent: dict[tuple[str, str], Phase] = {}
        for receiver, config in configs.items():
            for j in config.contributors:
                if (j, receiver) in dropped:
                    silent[(receiver, j)] = Phase.MASK
                if j not in self._fresh:
                    continue
                try:
                    contributors[(receiver, j)] = Contributor(
                        config,
                        name=j,
                        signing_key=self.keys[j],
                        values=self._fresh[j],
                        guard=self.guards[j],
                    )
                except GossipmedError as exc:
                    audit("secure_contribution_refused", site=j, round=round, detail=str(exc))
        self._parties = PartySet(
            configs=configs, aggregators=aggregators, contributors=contributors, silent=silent
        )
        return self._parties

    def outcomes(
        self, round: int, *, sent: Mapping[str, int], received: Mapping[str, int], audit: Audit
    ) -> dict[str, SecureOutcome]:
        """Each of this place's online receivers' outcome, with its bytes over all
        instances (`sent`/`received`: totals over every place)."""
        parties, self._parties, self._fresh = self._parties, None, {}
        out = dict(self._skipped)
        if parties is not None:
            for receiver, result in parties.results().items():
                self.searches[receiver].record(result).audit(audit, site=receiver, round=round)
                seconds = parties.seconds[receiver]
                if isinstance(result, ExchangeAborted):
                    skipped = f"{type(result).__name__}: {result}"
                    out[receiver] = SecureOutcome(skipped=skipped, seconds=seconds)
                else:
                    out[receiver] = SecureOutcome(result=result, seconds=seconds)
        return {
            s: SecureOutcome(
                result=o.result,
                skipped=o.skipped,
                bytes_sent=sent.get(s, 0),
                bytes_received=received.get(s, 0),
                seconds=o.seconds,
            )
            for s, o in sorted(out.items())
        }


def no_fresh_outcomes(sites: Collection[str]) -> dict[str, SecureOutcome]:
    """Nobody trained this round: no instance anywhere (fresh training only)."""
    return {s: SecureOutcome(skipped=NOT_FRESH) for s in sites}


@dataclass
class SecureNetwork:
    """Every site's secure side in one process: keys from the OS CSPRNG, as a real site's."""

    sites: tuple[str, ...]
    roster_hash: bytes
    fixed_point: FixedPoint | NormEnvelope
    keys: dict[str, SigningKey] = field(default_factory=dict)
    guards: dict[str, ContributionGuard] = field(default_factory=dict)
    searches: dict[str, SuspectSearch] = field(default_factory=dict)
    suspect_rng: random.Random | None = None  # tests only; None: the OS CSPRNG

    def __post_init__(self) -> None:
        for s in self.sites:
            self.keys.setdefault(s, SigningKey.generate())
        self.local = SecureSites(
            sites=self.sites,
            roster_hash=self.roster_hash,
            fixed_point=self.fixed_point,
            keys=self.keys,
            public={s: bytes(k.verify_key) for s, k in self.keys.items()},
            guards=self.guards,
            searches=self.searches,
        )

    def exchange(
        self,
        *,
        round: int,
        schedule: MixingSchedule,
        states: Mapping[str, Mapping[str, torch.Tensor] | None],
        dropped: Drop,
        audit: Audit,
    ) -> dict[str, SecureOutcome]:
        """One exchange of `round` among the sites in `states` (the online ones, None for a
        site that trained nothing this round); returns each online site's outcome as a
        receiver, with its bytes over all instances."""
        self.local.suspect_rng = self.suspect_rng
        fresh, schema = self.local.open(round, states)
        if schema is None:
            return no_fresh_outcomes(states)
        lost = {
            (j, i)
            for i in states
            for j in schedule.neighbours(round, i)
            if j in states and dropped(j, i)
        }
        parties = self.local.parties(
            round=round,
            schedule=schedule,
            online=list(states),
            fresh=fresh,
            schema=schema,
            dropped=lost,
            audit=audit,
        )
        run_phases(parties)
        return self.local.outcomes(round, sent=parties.sent, received=parties.received, audit=audit)
