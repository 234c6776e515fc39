"""The one loop that drives secure exchanges, phase by phase, wherever their parties live.

`run_phases` is the loop: every place that holds parties (a `PhaseNetwork`: one process with
every party, or a simulation engine's hosts, each holding some sites) produces its outgoing
messages as bytes, the loop routes them, and the next phase starts. Many receivers' exchanges
run side by side, each one's messages exactly those it would see alone. `PartySet` is the
parties of any number of exchanges that live in one process. Every message goes through its
byte encoding and the bounded parser, as it would between processes. Drops are injected per
(receiver, contributor): the contributor sends nothing from that phase on in that instance.

`run_instance` and `run_graph_exchange` drive it in memory for tests, analysis and the
simulator's reference; the daemon drives the same state machines from its own transport.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from nacl.signing import SigningKey

from gossipmed.errors import ConfigError, GossipmedError, SecAggError
from gossipmed.mixing.secagg.aggregator import AggregateResult, Aggregator, Outgoing
from gossipmed.mixing.secagg.contributor import Contributor
from gossipmed.mixing.secagg.errors import ExchangeAborted
from gossipmed.mixing.secagg.guard import ContributionGuard
from gossipmed.mixing.secagg.messages import Message, MessageLimits, decode_message
from gossipmed.mixing.secagg.params import (
    MIN_THRESHOLD,
    FixedPoint,
    InstanceConfig,
    InstanceId,
    Phase,
    check_threshold,
    threshold_for,
)

Drops = Mapping[tuple[str, str], Phase]
Tap = Callable[[str, str, Message], bool]
"""Sees every message as (sender, recipient, message); returning False loses it in transit."""


def instance_config(
    *,
    receiver: str,
    neighbours: Sequence[str],
    weights: Mapping[str, float],
    sign_keys: Mapping[str, bytes],
    schema: Mapping[str, tuple[int, ...]],
    roster_hash: bytes,
    round: int,
    step: int = 0,
    fixed_point: FixedPoint | None = None,
    minimum_threshold: int = MIN_THRESHOLD,
) -> InstanceConfig:
    """The InstanceConfig every party derives for `receiver`'s exchange, with the default
    threshold for its neighbourhood size."""
    return InstanceConfig(
        instance=InstanceId(roster_hash, receiver, round, step),
        weights={j: weights[j] for j in neighbours},
        sign_keys={j: sign_keys[j] for j in neighbours},
        schema=schema,
        threshold=threshold_for(len(set(neighbours)), minimum=minimum_threshold),
        fixed_point=fixed_point or FixedPoint(),
    )


Wire = tuple[str, str, str, bytes]
"""One message in transit: (instance, sender, recipient, bytes); `instance` names the receiver
whose exchange it belongs to."""

MAX_PHASE_STEPS = 64
"""An exchange has five phases, each closed by its messages or a deadline: far fewer steps."""


class PhaseNetwork(Protocol):
    """Where the parties of some exchanges live, seen by the loop."""

    def advertise(self) -> list[Wire]:
        """Every contributor's first message."""
        ...

    def aggregate(self, wires: Sequence[Wire]) -> tuple[list[Wire], bool]:
        """Hand receivers their contributors' messages (a receiver that got nothing to relay
        closes its phase: the deadline); returns what they relay, and whether every
        receiver's exchange has finished."""
        ...

    def contribute(self, wires: Sequence[Wire]) -> list[Wire]:
        """Hand contributors what their receivers relayed; returns their replies."""
        ...


def run_phases(network: PhaseNetwork) -> None:
    """Drive every exchange of `network` to its end. Messages are handed over in a fixed
    order (instance, sender, recipient), so where the parties live changes nothing."""
    outbox = network.advertise()
    for _ in range(MAX_PHASE_STEPS):
        relayed, finished = network.aggregate(sorted(outbox))
        outbox = network.contribute(sorted(relayed)) if relayed else []
        if finished:
            return
    raise SecAggError(f"a secure exchange did not finish in {MAX_PHASE_STEPS} steps")


class PartySet:
    """The parties that live in one process: the receivers' aggregators (by receiver) and
    contributors (by (receiver, contributor)) of any number of exchanges. `silent[(i, j)]`
    is the phase from which contributor j says nothing in i's exchange; `tap` sees (and may
    lose) every message. A message a party refuses is dropped (a refusing contributor goes
    quiet); bytes are counted per party when a message is handed over."""

    def __init__(
        self,
        *,
        configs: Mapping[str, InstanceConfig],
        aggregators: Mapping[str, Aggregator] | None = None,
        contributors: Mapping[tuple[str, str], Contributor] | None = None,
        silent: Mapping[tuple[str, str], Phase] | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.limits = {i: MessageLimits.of(c) for i, c in configs.items()}
        self.aggregators = dict(aggregators or {})
        self.contributors = dict(contributors or {})
        self.silent = dict(silent or {})
        self.tap = tap
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.seconds: dict[str, float] = dict.fromkeys(self.aggregators, 0.0)

    def quiet(self, instance: str, party: str, phase: Phase) -> bool:
        at = self.silent.get((instance, party))
        return at is not None and phase >= at

    def advertise(self) -> list[Wire]:
        out: list[Wire] = []
        for (i, j), client in sorted(self.contributors.items()):
            if self.quiet(i, j, Phase.ADVERTISE):
                continue
            message = client.advertise()
            if self.tap is None or self.tap(j, i, message):
                out.append((i, j, i, message.to_bytes()))
        return out

    def aggregate(self, wires: Sequence[Wire]) -> tuple[list[Wire], bool]:
        inbound: dict[str, list[Wire]] = {}
        for wire in wires:
            inbound.setdefault(wire[0], []).append(wire)
        relayed: list[Wire] = []
        for receiver, agg in sorted(self.aggregators.items()):
            if agg.finished:
                continue
            started = time.perf_counter()
            out: Outgoing = []
            for _, sender, _, data in inbound.get(receiver, []):
                message = self._open(receiver, sender, receiver, data)
                if message is None:
                    continue
                try:
                    out += agg.receive(sender, message)
                except GossipmedError:
                    continue
            if not out and not agg.finished:
                out = agg.deadline()
            for recipient, message in out:
                if self.quiet(receiver, recipient, agg.phase):
                    continue
                if self.tap is None or self.tap(receiver, recipient, message):
                    relayed.append((receiver, receiver, recipient, message.to_bytes()))
            self.seconds[receiver] += time.perf_counter() - started
        return relayed, all(a.finished for a in self.aggregators.values())

    def contribute(self, wires: Sequence[Wire]) -> list[Wire]:
        replies: list[Wire] = []
        for instance, sender, recipient, data in wires:
            client = self.contributors.get((instance, recipient))
            if client is None:
                continue
            message = self._open(instance, sender, recipient, data)
            if message is None:
                continue
            try:
                reply = client.handle(sender, message)
            except GossipmedError:  # refused (e.g. relayed below threshold): it goes quiet
                client.abort()
                continue
            if self.tap is None or self.tap(recipient, instance, reply):
                replies.append((instance, recipient, instance, reply.to_bytes()))
        return replies

    def results(self) -> dict[str, AggregateResult | ExchangeAborted]:
        out: dict[str, AggregateResult | ExchangeAborted] = {}
        for receiver, agg in self.aggregators.items():
            try:
                out[receiver] = agg.result()
            except ExchangeAborted as exc:
                out[receiver] = exc
        return out

    def _open(self, instance: str, sender: str, recipient: str, data: bytes) -> Message | None:
        """The message, counted for both parties, or None when it does not parse."""
        self.sent[sender] = self.sent.get(sender, 0) + len(data)
        self.received[recipient] = self.received.get(recipient, 0) + len(data)
        try:
            return decode_message(data, limits=self.limits[instance])
        except GossipmedError:
            return None


def run_instance(
    config: InstanceConfig,
    *,
    signing_keys: Mapping[str, SigningKey],
    values: Mapping[str, Mapping[str, torch.Tensor]],
    drops: Mapping[str, Phase] | None = None,
    guards: Mapping[str, ContributionGuard] | None = None,
    tap: Tap | None = None,
) -> AggregateResult | ExchangeAborted:
    """Run one receiver's exchange; `drops[j]` is the phase from which contributor j is
    silent, `tap` sees (and may lose) every message. Returns the result, or the
    ExchangeAborted that ended it."""
    receiver = config.instance.receiver
    clients = {
        (receiver, j): Contributor(
            config,
            name=j,
            signing_key=signing_keys[j],
            values=values[j],
            guard=(guards or {}).get(j) or ContributionGuard.after_training(config.instance.round),
        )
        for j in config.contributors
    }
    parties = PartySet(
        configs={receiver: config},
        aggregators={receiver: Aggregator(config)},
        contributors=clients,
        silent={(receiver, j): phase for j, phase in (drops or {}).items()},
        tap=tap,
    )
    run_phases(parties)
    return parties.results()[receiver]


def run_graph_exchange(
    *,
    neighbours: Mapping[str, Sequence[str]],
    weights: Mapping[str, Mapping[str, float]],
    values: Mapping[str, Mapping[str, torch.Tensor]],
    roster_hash: bytes,
    round: int,
    step: int = 0,
    fixed_point: FixedPoint | None = None,
    minimum_threshold: int = MIN_THRESHOLD,
    drops: Drops | None = None,
    signing_keys: Mapping[str, SigningKey] | None = None,
    guards: Mapping[str, ContributionGuard] | None = None,
) -> dict[str, AggregateResult | ExchangeAborted]:
    """Every site's exchange as receiver. `weights[i][j]` is w_ij; `values[j]` are j's
    tensors; `drops[(i, j)]` silences contributor j in receiver i's exchange from a phase on.
    Refuses (ConfigError, naming them) graphs where some neighbourhood cannot reach the
    threshold, as `consortium build` must."""
    short = check_threshold(neighbours, minimum=minimum_threshold)
    if short:
        raise ConfigError(
            f"secure aggregation needs at least {max(minimum_threshold, MIN_THRESHOLD)} "
            f"neighbours per site; too few at: {', '.join(short)}"
        )
    keys = dict(signing_keys) if signing_keys else {s: SigningKey.generate() for s in neighbours}
    public = {s: bytes(k.verify_key) for s, k in keys.items()}
    first = next(iter(values.values()))
    schema = {name: tuple(t.shape) for name, t in first.items()}
    drops = drops or {}
    results: dict[str, AggregateResult | ExchangeAborted] = {}
    for receiver in sorted(neighbours):
        config = instance_config(
            receiver=receiver,
            neighbours=neighbours[receiver],
            weights=weights[receiver],
            sign_keys=public,
            schema=schema,
            roster_hash=roster_hash,
            round=round,
            step=step,
            fixed_point=fixed_point,
            minimum_threshold=minimum_threshold,
        )
        local = {j: phase for (i, j), phase in drops.items() if i == receiver}
        results[receiver] = run_instance(
            config, signing_keys=keys, values=values, drops=local, guards=guards
        )
    return results
