"""Typed refusals of secure aggregation, so the integration can audit each with its reason.

Three families: a message that is not even well formed (`MalformedMessage`, also a
`WireError`), a well-formed message the protocol refuses (`ProtocolViolation`: wrong phase,
twice, non-member, declared dropped, bad signature, inconsistent view), and an exchange that
ends without a sum (`ExchangeAborted`: below threshold, failed reconstruction, a decoded sum
outside its public bound). A refused message never changes a state machine's state.
"""

from __future__ import annotations

from gossipmed.errors import SecAggError, WireError


class MalformedMessage(SecAggError, WireError):
    """Bytes that do not parse as a secure-aggregation message within the hard limits."""


class ProtocolViolation(SecAggError):
    """A parsed message the protocol refuses; the state machine is unchanged."""


class WrongInstance(ProtocolViolation):
    """The message is bound to another exchange (roster, receiver, round or step)."""


class NotAContributor(ProtocolViolation):
    """The sender (or a party named in the message) is not in this neighbourhood."""


class OutOfPhase(ProtocolViolation):
    """The message kind is not the one the current phase expects."""


class DuplicateMessage(ProtocolViolation):
    """This party already sent this phase's message."""


class DeclaredDropped(ProtocolViolation):
    """The sender was already declared dropped (e.g. a masked input after the list was fixed)."""


class ForgedMessage(ProtocolViolation):
    """A signature or an authenticated ciphertext does not verify."""


class InconsistentView(ProtocolViolation):
    """What the relay says contradicts what this party already saw or sent."""


class NonFiniteInput(SecAggError):
    """A contributor's own tensors hold NaN (infinities are clipped to the public range)."""


class ReusedInstance(SecAggError):
    """A contributor was asked to contribute again to an exchange it already started."""


class StaleState(ReusedInstance):
    """A contribution without a completed local training step since the last one to the same
    receiver: sums of training-free states leak individual states across rounds."""


class ExchangeAborted(SecAggError):
    """The exchange ends without a sum; the receiver mixes without its neighbours this time."""


class BelowThreshold(ExchangeAborted):
    """Fewer than the threshold of contributors remain in some phase."""


class ReconstructionFailed(ExchangeAborted):
    """Revealed shares do not reconstruct a secret that matches its public key or commitment."""


class SumOutOfRange(ExchangeAborted):
    """The unmasked sum lies outside the public bound: some contributor sent a wrapped value."""
