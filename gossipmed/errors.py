"""One exception hierarchy so callers (CLI, daemon) can catch every expected failure at once.

Anything that is *not* a GossipmedError is a bug and is allowed to surface as a traceback.
The one exception is `topology.errors.TopologyError`: the topology package must stay free of
imports from gossipmed, so the CLI catches it alongside GossipmedError.
"""

from __future__ import annotations


class GossipmedError(Exception):
    """Root of every error gossipmed raises on purpose (bad input, refused work)."""


class ConfigError(GossipmedError):
    """A configuration value or file is invalid."""


class DataError(GossipmedError):
    """A dataset cannot be loaded or partitioned."""


class ModelError(GossipmedError):
    """A base model or adapter cannot be built, loaded or saved."""


class PrivacyError(GossipmedError):
    """Differential-privacy configuration or accounting problem."""


class PrivacyBudgetExceeded(PrivacyError):
    """A training step would spend more epsilon than the site's budget allows."""


class WireError(GossipmedError):
    """Bytes from the network (or disk) failed validation; the message is dropped."""


class RosterError(GossipmedError):
    """The consortium roster is invalid or a party is not allowed."""


class IdentityError(GossipmedError):
    """A site identity (key files) is missing, unreadable or would be overwritten."""


class TransportError(GossipmedError):
    """Sending or receiving over a transport failed."""


class CheckpointError(GossipmedError):
    """A checkpoint cannot be written or read back."""


class SecAggError(GossipmedError):
    """Secure aggregation refused a message or could not complete an exchange."""
