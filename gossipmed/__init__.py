"""gossipmed: the learning library (pure computation: no sockets, no event loops)."""

from gossipmed.errors import GossipmedError

__version__ = "0.1.0"
__all__ = ["GossipmedError", "__version__"]
