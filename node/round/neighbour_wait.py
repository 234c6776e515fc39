"""Waiting out one exchange's neighbours, each by its own adapted wait (node.round.patience).

Apart from the driver because this loop is where the per-neighbour waits are enforced and
learnt from: a slow or dead neighbour must cost at most its own wait, never everybody's pace.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from node.round.patience import Patience
from node.round.peer import Peer


async def await_neighbours(
    peer: Peer,
    patience: Patience,
    *,
    round: int,
    step: int,
    start: float,
    waits: dict[str, float],
    arrival: Callable[[], trio.Event],
) -> None:
    """Until each awaited neighbour is heard, known to be past `round`, or out of its own
    wait; each outcome teaches `patience`. `arrival()`: the event the driver's pump sets
    when the next message has been handled (a fresh one each time)."""
    open_waits = {n: start + w for n, w in waits.items()}
    while open_waits:
        now = trio.current_time()
        pending = peer.pending(round, step)
        heard = peer.heard(round, step)
        for n, until in list(open_waits.items()):
            if n in heard:
                patience.heard(n, now - start)
            elif n in pending and now >= until:
                patience.missed(n)
            elif n in pending:
                continue
            del open_waits[n]  # heard, missed, or moved past the round (no lesson)
        if open_waits:
            with trio.move_on_at(min(open_waits.values())):
                await arrival().wait()
