"""The simulator's secure exchange: every online site's instance over the graph, in memory.

The same state machines as the daemon (gossipmed.mixing.secagg Aggregator and Contributor),
every message through its byte encoding and the bounded parser. The simulator's faults map
to protocol drops:

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
given), and audits the one it names. Bytes are the protocol
messages' encodings (no envelope framing), counted for their sender and their recipient.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from nacl.signing import SigningKey

from gossipmed.errors import GossipmedError
from gossipmed.mixing.secagg import (
    AggregateResult,
    Aggregator,
    ContributionGuard,
    Contributor,
    ExchangeAborted,
    FixedPoint,
    InstanceConfig,
    Message,
    MessageLimits,
    Phase,
    decode_message,
    instance_config,
)
from gossipmed.mixing.secagg.envelope import NormEnvelope, resolve
from gossipmed.mixing.secagg.suspects import SuspectSearch
from node.round.secure_mix import SecureOutcome
from node.round.secure_session import NOT_FRESH
from topology.schedule import MixingSchedule

Drop = Callable[[str, str], bool]
"""(contributor, receiver) -> whether the contributor's masked input is lost (or late)."""


@dataclass
class SecureNetwork:
    """Per-site signing keys and contribution guards that live for a whole simulated run."""

    sites: tuple[str, ...]
    roster_hash: bytes
    fixed_point: FixedPoint | NormEnvelope
    keys: dict[str, SigningKey] = field(default_factory=dict)
    guards: dict[str, ContributionGuard] = field(default_factory=dict)
    searches: dict[str, SuspectSearch] = field(default_factory=dict)
    suspect_rng: random.Random | None = None  # tests only; None: the OS CSPRNG

    def __post_init__(self) -> None:
        for s in self.sites:  # keys from the OS CSPRNG, as a real site's
            self.keys.setdefault(s, SigningKey.generate())
            self.guards.setdefault(s, ContributionGuard())

    def exchange(
        self,
        *,
        round: int,
        schedule: MixingSchedule,
        states: Mapping[str, Mapping[str, torch.Tensor] | None],
        dropped: Drop,
        audit: Callable[..., None],
    ) -> dict[str, SecureOutcome]:
        """One exchange of `round` among the sites in `states` (the online ones, None for a
        site that trained nothing this round); returns each online site's outcome as a
        receiver, with its bytes over all instances."""
        sent = dict.fromkeys(states, 0)
        received = dict.fromkeys(states, 0)
        public = {s: bytes(k.verify_key) for s, k in self.keys.items()}
        fresh = {s: v for s, v in states.items() if v is not None}
        for s in fresh:
            self.guards[s].note_trained(round)
        first = next(iter(fresh.values()), None)
        if first is None:  # nobody trained: no instance anywhere (fresh training only)
            return {s: SecureOutcome(skipped=NOT_FRESH) for s in states}
        schema = {name: tuple(t.shape) for name, t in first.items()}
        fixed_point = resolve(self.fixed_point, sum(t.numel() for t in first.values()))
        outcomes: dict[str, SecureOutcome] = {}
        for receiver in sorted(states):
            if not self.guards[receiver].fresh_for(round):
                outcomes[receiver] = SecureOutcome(skipped=NOT_FRESH)
                continue
            started = time.perf_counter()
            neighbours = sorted(schedule.neighbours(round, receiver))
            row = schedule.row(round, receiver)
            try:
                config = instance_config(
                    receiver=receiver,
                    neighbours=neighbours,
                    weights={j: row[j] for j in neighbours},
                    sign_keys=public,
                    schema=schema,
                    roster_hash=self.roster_hash,
                    round=round,
                    fixed_point=fixed_point,
                )
            except GossipmedError as exc:
                outcomes[receiver] = SecureOutcome(skipped=f"no instance: {exc}")
                continue
            silent: dict[str, Phase] = {}
            clients: dict[str, Contributor] = {}
            for j in config.contributors:
                if j not in fresh:
                    silent[j] = Phase.ADVERTISE
                    continue
                try:
                    clients[j] = Contributor(
                        config,
                        name=j,
                        signing_key=self.keys[j],
                        values=fresh[j],
                        guard=self.guards[j],
                    )
                except GossipmedError as exc:
                    silent[j] = Phase.ADVERTISE
                    audit("secure_contribution_refused", site=j, round=round, detail=str(exc))
                    continue
                if dropped(j, receiver):
                    silent[j] = Phase.MASK
            search = self.searches.setdefault(receiver, SuspectSearch(rng=self.suspect_rng))
            exclude = search.exclusion(config.contributors, config.threshold)
            result = _drive(config, clients, silent, exclude=exclude, sent=sent, received=received)
            search.record(result).audit(audit, site=receiver, round=round)
            seconds = time.perf_counter() - started
            if isinstance(result, ExchangeAborted):
                outcomes[receiver] = SecureOutcome(
                    skipped=f"{type(result).__name__}: {result}", seconds=seconds
                )
            else:
                outcomes[receiver] = SecureOutcome(result=result, seconds=seconds)
        return {
            s: SecureOutcome(
                result=o.result,
                skipped=o.skipped,
                bytes_sent=sent[s],
                bytes_received=received[s],
                seconds=o.seconds,
            )
            for s, o in outcomes.items()
        }


def _drive(
    config: InstanceConfig,
    clients: Mapping[str, Contributor],
    silent: Mapping[str, Phase],
    *,
    exclude: frozenset[str] = frozenset(),
    sent: dict[str, int],
    received: dict[str, int],
) -> AggregateResult | ExchangeAborted:
    """One receiver's instance, every message through bytes; like
    gossipmed.mixing.secagg.run_instance, with byte counts and contributors built outside.
    A message the receiver refuses (an excluded contributor's masked input) is dropped."""
    limits = MessageLimits.of(config)
    receiver = config.instance.receiver
    agg = Aggregator(config, exclude=exclude)

    def wire(sender: str, recipient: str, message: Message) -> Message:
        data = message.to_bytes()
        sent[sender] = sent.get(sender, 0) + len(data)
        if recipient in received:
            received[recipient] += len(data)
        return decode_message(data, limits=limits)

    def quiet(j: str, phase: Phase) -> bool:
        return j in silent and phase >= silent[j]

    outbox: list[tuple[str, Message]] = [
        (j, c.advertise()) for j, c in clients.items() if not quiet(j, Phase.ADVERTISE)
    ]
    while not agg.finished:
        relayed: list[tuple[str, Message]] = []
        for sender, message in outbox:
            try:
                relayed += agg.receive(sender, wire(sender, receiver, message))
            except GossipmedError:
                continue
        if not relayed and not agg.finished:
            relayed = agg.deadline()
        outbox = []
        for recipient, message in relayed:
            if recipient not in clients or quiet(recipient, agg.phase):
                continue
            try:
                reply = clients[recipient].handle(receiver, wire(receiver, recipient, message))
            except GossipmedError:  # refused (e.g. relayed below threshold): it goes quiet
                clients[recipient].abort()
                continue
            outbox.append((recipient, reply))
    try:
        return agg.result()
    except ExchangeAborted as exc:
        return exc
