"""The driver's catch-up decisions: where a site that is behind jumps, and where a round whose
training ended late is offered instead.

Kept apart from node.round.driver because these are decisions on neighbours' claims, which are
hostile words, and they must stay readable next to the rules they apply
(node.round.progress: a quorum of recent claims, bounded jumps, never FINAL_ROUND); the driver
only acts on the answers (skips, deferrals, audit and status).
"""

from __future__ import annotations

import math

import trio

from node.round.peer import Peer
from node.round.progress import FINAL_ROUND, jump_target, recent_window_s
from node.round.secure_session import SecureSession


class CatchUp:
    """What a quorum of recently heard neighbours says about this site's round."""

    def __init__(self, peer: Peer, *, round_timeout_s: float, secure: SecureSession | None) -> None:
        self.peer = peer
        self.round_timeout_s = round_timeout_s
        self.secure = secure

    def target(self, round: int, *, rounds: int, started: float) -> int | None:
        """Where a site at `round` jumps (node.round.progress): the round a quorum of recently
        heard neighbours claims, at most MAX_JUMP_ROUNDS on and before the last of `rounds`
        (run()'s limit; 0: none); None: no jump."""
        return jump_target(current=round, ahead=self.ahead(started=started), rounds=rounds)

    def ahead(self, *, started: float) -> int | None:
        """Until one round timeout has passed since `started` (when run() began), a live
        neighbour may simply not have been heard yet: then the quorum is a majority of ALL the
        neighbours (one early liar among two must not count as a majority of one)."""
        window = recent_window_s(self.round_timeout_s)
        quorum = None
        if math.isfinite(started) and trio.current_time() - started < self.round_timeout_s:
            degree = len(self.peer.schedule.neighbours(self.peer.round, self.peer.name))
            quorum = degree // 2 + 1
        rounds = [self.peer.quorum_round(window_s=window, quorum=quorum)]
        if self.secure is not None:
            rounds.append(self.secure.furthest_round)
        known = [r for r in rounds if r is not None]
        return max(known) if known else None

    def deferral(self, round: int, *, rounds: int, started: float) -> tuple[int, int] | None:
        """After training: if a quorum of recently heard neighbours is already past `round`,
        an update for `round` would be refused as stale where it is late, so the trained state
        goes into the round after theirs (buffered by them until they open it), at most
        MAX_JUMP_ROUNDS on. (the round they claim, the round to offer it in), or None: keep
        `round`."""
        ahead = self.ahead(started=started)
        if ahead is None or ahead <= round:
            return None
        target = jump_target(current=round, ahead=ahead + 1, rounds=rounds)
        if target is None or min(target, FINAL_ROUND - 1) <= round:
            return None
        return ahead, min(target, FINAL_ROUND - 1)  # the trained state is sealed in `target`
