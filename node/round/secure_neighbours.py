"""What a secure session learns about its neighbours: how far they claim to be (catch-up) and
which contributor the public bounds point at (suspects).

Both are judgements on hostile input, kept apart from the protocol bookkeeping of
node.round.secure_session so their rules read on their own: a claim is one capped integer per
neighbour that moves nothing by itself (node.round.progress), and a suspect is named only by
gossipmed.mixing.secagg.suspects, from sums that failed or passed the public bounds.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView

from gossipmed.mixing.secagg.params import threshold_for
from gossipmed.mixing.secagg.suspects import SuspectSearch
from node.round.progress import Claim, capped, quorum_round, recent_window_s


class RoundClaims:
    """Neighbour -> its round claim in signed frames (node.round.progress)."""

    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}

    def note(self, sender: str, round: int, *, now: float) -> None:
        """An authentic frame of a neighbour that was taken or refused only as early: its
        claim, one integer capped below MAX_ROUND, and when it was heard."""
        old = self._claims.get(sender)
        if old is None:
            self._claims[sender] = Claim(round=capped(round), heard_at=now)
        else:  # a replayed buffered frame carries its arrival time, which may be older
            self._claims[sender] = Claim(
                round=max(old.round, capped(round)), heard_at=max(old.heard_at, now)
            )

    def clear(self) -> None:
        self._claims.clear()

    def items(self) -> ItemsView[str, Claim]:
        """Each neighbour's claim, read-only (what the session's properties are checked on)."""
        return self._claims.items()

    def furthest(self, neighbours: frozenset[str], *, now: float, timeout_s: float) -> int | None:
        """The highest round that a majority of the neighbours heard recently, and at least a
        threshold of all of them, claim (None below that). One neighbour alone cannot make the
        site jump: a frame of round 2**40 would otherwise move it there, write that round into
        its contribution guard and end its secure aggregation for good. Fewer than a threshold
        of neighbours ahead cannot aggregate with it anyway."""
        return quorum_round(
            self._claims,
            neighbours=neighbours,
            now=now,
            window_s=recent_window_s(timeout_s),
            quorum=threshold_for(max(len(neighbours), 1)),
        )


def judge(
    suspects: SuspectSearch,
    outcome: object,
    *,
    audit: Callable[..., None],
    site: str,
    round: int,
) -> None:
    """Record one outcome of the own instance with the suspect search and audit its verdict."""
    suspects.record(outcome).audit(audit, site=site, round=round)
