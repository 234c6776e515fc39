"""What the round driver shows of its progress: the one record `status` reads and the daemon
keeps when no driver runs, apart from the driver so the status side needs no trio machinery."""

from __future__ import annotations

from dataclasses import dataclass, field

from gossipmed.metrics import RoundRecord

MAX_SKIP_RECORDS = 32
"""Skipped-round ranges kept for status (the most recent ones)."""


@dataclass
class DriverState:
    """What `status` shows about the driver's progress."""

    round: int = 0
    phase: str = "starting"
    completed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    failures: int = 0
    last_record: RoundRecord | None = None
    skipped: list[tuple[int, int]] = field(default_factory=list)
    """Rounds jumped over to catch up, as [first, last] ranges (the most recent ones)."""
    failed_rounds: int = 0
    """Rounds given up because something between the network and the checkpoint failed."""
    deferred: int = 0
    """Rounds whose training ended after the neighbours had moved on (offered later)."""
    waits: dict[str, float] = field(default_factory=dict)
    """Each awaited neighbour's wait in the current exchange, in seconds."""
