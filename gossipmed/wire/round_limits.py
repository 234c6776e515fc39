"""The largest round and exchange numbers the wire accepts: shared by the consortium
settings (which must not load torch to validate a file) and the update format."""

from __future__ import annotations

MAX_ROUND = 2**40
"""Rounds above this are refused on the wire: at one round a second that is 35,000 years."""
MAX_STEPS_PER_ROUND = 64
"""Exchanges (gossip steps) per round at most; steps on the wire are 0 .. this - 1."""
