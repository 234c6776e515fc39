"""How far a site may jump ahead on its neighbours' word (catch-up after a restart).

A neighbour's round claim is only its word: a validly signed envelope of round 2**40 from one
member used to move a site there, the site then sealed round-2**40 updates that moved its
neighbours too, and sealing round 2**40 + 1 ended every daemon. The rules, on both paths
(plain updates and secure-aggregation frames):

- a claim is one integer per current graph neighbour, capped below `MAX_ROUND`, learnt from an
  authentic update that was accepted or refused only as too early; it moves nothing by itself;
- a site jumps only to the highest round that a majority (floor(k/2) + 1) of the k neighbours
  heard within `RECENT_TIMEOUTS` round timeouts claims: one neighbour among two live ones
  cannot move it, a star leaf (k = 1) follows its hub, a ring site with one dead neighbour
  follows the live one;
- by at most `MAX_JUMP_ROUNDS` rounds per jump, and never to `FINAL_ROUND` or beyond: a site
  that reaches `FINAL_ROUND` stops (exit 0, audited) instead of running rounds it could not
  seal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gossipmed.errors import GossipmedError
from gossipmed.wire.update import MAX_ROUND

MAX_JUMP_ROUNDS = 4096
"""Rounds one catch-up jump may skip; a longer gap takes several jumps, one per round run
without training (so a majority of lying neighbours moves a site only this fast)."""

FINAL_ROUND = MAX_ROUND - 1
"""A site that reaches this round stops: it is never run, and no claim reaches past it."""

RECENT_TIMEOUTS = 4
"""A neighbour counts towards the quorum if heard within this many round timeouts..."""
MIN_RECENT_S = 60.0
"""...or within this many seconds, whichever is longer (short test timeouts)."""


class RoundLimitReached(GossipmedError):
    """The site reached FINAL_ROUND: it stops (exit 0, audited) rather than run rounds it
    could not seal."""


@dataclass(frozen=True)
class Claim:
    """A neighbour's word on its progress: the highest round it showed, and when it last
    sent something this site took (accepted, or refused only as too early)."""

    round: int
    heard_at: float


def capped(round: int) -> int:
    """A claim never reaches `FINAL_ROUND` (the highest round a site could seal is
    MAX_ROUND; claims stop one short so the target stays sealable)."""
    return max(0, min(round, FINAL_ROUND))


def recent_window_s(round_timeout_s: float) -> float:
    if not math.isfinite(round_timeout_s):
        return math.inf
    return max(RECENT_TIMEOUTS * round_timeout_s, MIN_RECENT_S)


def majority_round(rounds: Iterable[int], *, quorum: int | None = None) -> int | None:
    """The highest round at least a majority (floor(k/2) + 1, or `quorum` if larger) of the
    k given claims reach; None when there are fewer claims than that."""
    ordered = sorted(rounds, reverse=True)
    need = len(ordered) // 2 + 1
    if quorum is not None:
        need = max(need, quorum)
    if not ordered or len(ordered) < need:
        return None
    return ordered[need - 1]


def quorum_round(
    claims: Mapping[str, Claim],
    *,
    neighbours: Iterable[str],
    now: float,
    window_s: float,
    quorum: int | None = None,
) -> int | None:
    """The majority round of the current `neighbours` heard within `window_s` of `now`."""
    recent = [
        c.round
        for n in neighbours
        if (c := claims.get(n)) is not None and now - c.heard_at <= window_s
    ]
    return majority_round(recent, quorum=quorum)


def jump_target(*, current: int, ahead: int | None, rounds: int = 0) -> int | None:
    """Where a site at `current` jumps when a quorum is at `ahead`: bounded by
    MAX_JUMP_ROUNDS, below FINAL_ROUND + 1, and before the last of `rounds` (0: no limit).
    None: no jump."""
    if ahead is None or ahead <= current:
        return None
    target = min(ahead, current + MAX_JUMP_ROUNDS, FINAL_ROUND)
    if rounds:
        target = min(target, rounds - 1)
    return target if target > current else None
