"""topology imports nothing from gossipmed, so its one error type lives here (the CLI treats
it like any GossipmedError: one line, exit code 2)."""


class TopologyError(ValueError):
    """A graph cannot be built, loaded, or used for gossip (disconnected, self loops...)."""
