"""One round numbering for people: round 1 is the first.

The wire, checkpoints and metrics.jsonl (`round`) count from 0, and stay so: they are
formats others parse. Everything a person reads (daemon logs, `status`, `cluster status`,
`inspect`, the dashboard, plots) shows `shown(round)`, so the record with `"round": 0` is
"round 1" everywhere.
"""

from __future__ import annotations


def shown(round_index: int) -> int:
    """The 1-based number a person sees for the 0-based round index of the formats."""
    return round_index + 1
