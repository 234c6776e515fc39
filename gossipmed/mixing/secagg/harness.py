"""One secure exchange over a whole graph, in memory: every site is the receiver of its own
neighbourhood and a contributor to each neighbour's. Every message goes through its byte
encoding and the bounded parser, as it would between processes. Drops are injected per
(receiver, contributor): the contributor sends nothing from that phase on in that instance.

For tests, analysis and the simulator's reference; the daemon drives the same state machines
from its own transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from nacl.signing import SigningKey

from gossipmed.errors import ConfigError
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


def _wire(message: Message, limits: MessageLimits) -> Message:
    return decode_message(message.to_bytes(), limits=limits)


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
    drops = drops or {}
    limits = MessageLimits.of(config)
    receiver = config.instance.receiver
    agg = Aggregator(config)
    clients = {
        j: Contributor(
            config,
            name=j,
            signing_key=signing_keys[j],
            values=values[j],
            guard=(guards or {}).get(j) or ContributionGuard.after_training(config.instance.round),
        )
        for j in config.contributors
    }

    def silent(j: str, phase: Phase) -> bool:
        return j in drops and phase >= drops[j]

    def delivered(sender: str, recipient: str, message: Message) -> bool:
        return tap is None or tap(sender, recipient, message)

    outbox: list[tuple[str, Message]] = [
        (j, c.advertise()) for j, c in clients.items() if not silent(j, Phase.ADVERTISE)
    ]
    while not agg.finished:
        relayed: Outgoing = []
        for sender, message in outbox:
            if delivered(sender, receiver, message):
                relayed += agg.receive(sender, _wire(message, limits))
        if not relayed and not agg.finished:
            relayed = agg.deadline()
        outbox = []
        for recipient, message in relayed:
            if silent(recipient, agg.phase) or not delivered(receiver, recipient, message):
                continue
            reply = clients[recipient].handle(receiver, _wire(message, limits))
            outbox.append((recipient, reply))
    try:
        return agg.result()
    except ExchangeAborted as exc:
        return exc


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
