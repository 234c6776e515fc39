"""Neighbourhood secure aggregation (Bonawitz et al., CCS 2017), as pure computation.

In each exchange site i is the receiver ("server") of one protocol instance over its graph
neighbours N(i), and each j in N(i) contributes y_j = w_ij * x_j; i learns only
sum_{j in U3} y_j over the contributors U3 that completed the masked-input phase.
Double masking: y_j + PRG(b_j) + sum_k +-PRG(s_jk) mod 2**B, with pairwise seeds from fresh
signed X25519 keys and the self-mask seed b_j Shamir-shared among the neighbourhood; in the
unmask phase each contributor reveals, against one signed survivor list with >= t
signatures, the mask-key shares of the dropped and the self-mask shares of the survivors,
never both for one party.

The integration (node/) owns transport, deadlines and persistence; it uses:
- `InstanceConfig` / `InstanceId` / `FixedPoint` / `threshold_for` / `check_threshold`;
- `Contributor` (one per neighbour's exchange) and `Aggregator` (one per own exchange),
  driven by `handle()` / `receive()` / `deadline()`, messages via `decode_message`;
- `ContributionGuard`, persisted, so a restarted site never contributes twice to one exchange,
  and never contributes a state without a local training step since its last contribution;
- `run_graph_exchange` / `run_instance`, an in-memory harness with injectable drops.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipmed.mixing.secagg.aggregator import AggregateResult, Aggregator
    from gossipmed.mixing.secagg.contributor import Contributor
    from gossipmed.mixing.secagg.errors import (
        BelowThreshold,
        DeclaredDropped,
        DuplicateMessage,
        ExchangeAborted,
        ForgedMessage,
        InconsistentView,
        MalformedMessage,
        NonFiniteInput,
        NotAContributor,
        OutOfPhase,
        ProtocolViolation,
        ReconstructionFailed,
        ReusedInstance,
        StaleState,
        SumOutOfRange,
        WrongInstance,
    )
    from gossipmed.mixing.secagg.guard import ContributionGuard
    from gossipmed.mixing.secagg.harness import instance_config, run_graph_exchange, run_instance
    from gossipmed.mixing.secagg.messages import (
        AdvertiseKeys,
        ForwardedShares,
        KeyRoster,
        ListSignature,
        MaskedInput,
        Message,
        MessageLimits,
        SharedKeys,
        SignedSurvivors,
        SurvivorList,
        UnmaskShares,
        decode_message,
    )
    from gossipmed.mixing.secagg.params import (
        MAX_CONTRIBUTORS,
        MIN_THRESHOLD,
        FixedPoint,
        InstanceConfig,
        InstanceId,
        Phase,
        check_threshold,
        threshold_for,
    )

# Loaded on first use (PEP 562): the consortium settings import this package for one small
# type, and every light command (`gossipmed status`, `init`) would otherwise load torch
# through the aggregator.
_WHERE = {
    "AdvertiseKeys": "gossipmed.mixing.secagg.messages",
    "AggregateResult": "gossipmed.mixing.secagg.aggregator",
    "Aggregator": "gossipmed.mixing.secagg.aggregator",
    "BelowThreshold": "gossipmed.mixing.secagg.errors",
    "ContributionGuard": "gossipmed.mixing.secagg.guard",
    "Contributor": "gossipmed.mixing.secagg.contributor",
    "DeclaredDropped": "gossipmed.mixing.secagg.errors",
    "DuplicateMessage": "gossipmed.mixing.secagg.errors",
    "ExchangeAborted": "gossipmed.mixing.secagg.errors",
    "FixedPoint": "gossipmed.mixing.secagg.params",
    "ForgedMessage": "gossipmed.mixing.secagg.errors",
    "ForwardedShares": "gossipmed.mixing.secagg.messages",
    "InconsistentView": "gossipmed.mixing.secagg.errors",
    "InstanceConfig": "gossipmed.mixing.secagg.params",
    "InstanceId": "gossipmed.mixing.secagg.params",
    "KeyRoster": "gossipmed.mixing.secagg.messages",
    "ListSignature": "gossipmed.mixing.secagg.messages",
    "MAX_CONTRIBUTORS": "gossipmed.mixing.secagg.params",
    "MIN_THRESHOLD": "gossipmed.mixing.secagg.params",
    "MalformedMessage": "gossipmed.mixing.secagg.errors",
    "MaskedInput": "gossipmed.mixing.secagg.messages",
    "Message": "gossipmed.mixing.secagg.messages",
    "MessageLimits": "gossipmed.mixing.secagg.messages",
    "NonFiniteInput": "gossipmed.mixing.secagg.errors",
    "NotAContributor": "gossipmed.mixing.secagg.errors",
    "OutOfPhase": "gossipmed.mixing.secagg.errors",
    "Phase": "gossipmed.mixing.secagg.params",
    "ProtocolViolation": "gossipmed.mixing.secagg.errors",
    "ReconstructionFailed": "gossipmed.mixing.secagg.errors",
    "ReusedInstance": "gossipmed.mixing.secagg.errors",
    "SharedKeys": "gossipmed.mixing.secagg.messages",
    "SignedSurvivors": "gossipmed.mixing.secagg.messages",
    "StaleState": "gossipmed.mixing.secagg.errors",
    "SumOutOfRange": "gossipmed.mixing.secagg.errors",
    "SurvivorList": "gossipmed.mixing.secagg.messages",
    "UnmaskShares": "gossipmed.mixing.secagg.messages",
    "WrongInstance": "gossipmed.mixing.secagg.errors",
    "check_threshold": "gossipmed.mixing.secagg.params",
    "decode_message": "gossipmed.mixing.secagg.messages",
    "instance_config": "gossipmed.mixing.secagg.harness",
    "run_graph_exchange": "gossipmed.mixing.secagg.harness",
    "run_instance": "gossipmed.mixing.secagg.harness",
    "threshold_for": "gossipmed.mixing.secagg.params",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_CONTRIBUTORS",
    "MIN_THRESHOLD",
    "AdvertiseKeys",
    "AggregateResult",
    "Aggregator",
    "BelowThreshold",
    "ContributionGuard",
    "Contributor",
    "DeclaredDropped",
    "DuplicateMessage",
    "ExchangeAborted",
    "FixedPoint",
    "ForgedMessage",
    "ForwardedShares",
    "InconsistentView",
    "InstanceConfig",
    "InstanceId",
    "KeyRoster",
    "ListSignature",
    "MalformedMessage",
    "MaskedInput",
    "Message",
    "MessageLimits",
    "NonFiniteInput",
    "NotAContributor",
    "OutOfPhase",
    "Phase",
    "ProtocolViolation",
    "ReconstructionFailed",
    "ReusedInstance",
    "SharedKeys",
    "SignedSurvivors",
    "StaleState",
    "SumOutOfRange",
    "SurvivorList",
    "UnmaskShares",
    "WrongInstance",
    "check_threshold",
    "decode_message",
    "instance_config",
    "run_graph_exchange",
    "run_instance",
    "threshold_for",
]
