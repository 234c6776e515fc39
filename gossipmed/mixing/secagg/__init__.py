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
