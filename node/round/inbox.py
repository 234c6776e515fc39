"""What a site has heard: neighbours' updates buffered by exchange, and how far each got.

Admission rules, in order, for an update that already passed the sealer's checks (membership,
signature, freshness, schema):
    stale            its exchange was already mixed (or is older)
    not_a_neighbour  the sender has no edge to this site in that round's graph
    too_early        more than `max_future_rounds` rounds ahead of this site
    no_such_step     a step the consortium's rounds do not have (`steps_per_round`): never
                     mixed, it would only hold memory (a sender could otherwise fill
                     (max_future_rounds + 1) x 64 buffers instead of the x steps_per_round
                     a round needs)
    duplicate        this sender's update for that exchange is already buffered

A refused update changes no state, with two exceptions: an authentic update of a current graph
neighbour refused only as too early records that neighbour's claimed round (or a restarted
site could never rejoin), and one refused as stale records that the neighbour was heard, and
at which round (otherwise a site that one neighbour alone had moved ahead, while its other
neighbour was down, would never hear that neighbour again once it was back: the one that
moved it would stay a "majority" of one, and keep moving it, for good). Progress is learnt
from these and from accepted updates only: one integer per neighbour, capped below MAX_ROUND
(node.round.progress). A claim moves nothing by
itself; the driver jumps only on a quorum of recent claims. A member with no edge to us
cannot inform catch-up at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gossipmed.errors import GossipmedError
from node.round.progress import Claim, capped, quorum_round


class Refused(GossipmedError):
    """An authentic update this site does not take now (the reason names the rule)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class NeighbourStats:
    last_heard: float | None = None  # wall-clock time of the last accepted or too-early update
    last_round: int | None = None  # its claim: the highest such round, capped below MAX_ROUND
    accepted: int = 0


@dataclass
class ExchangeBuffer:
    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    bytes_received: int = 0


class Inbox:
    """Not thread-safe by itself: the peer calls it under its own lock."""

    def __init__(
        self,
        *,
        max_future_rounds: int,
        steps_per_round: int = 1,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.max_future_rounds = max_future_rounds
        self.steps_per_round = steps_per_round
        self._wall_clock = wall_clock
        self._buffers: dict[tuple[int, int], ExchangeBuffer] = {}
        self.neighbours: dict[str, NeighbourStats] = {}

    def check(
        self,
        *,
        sender: str,
        exchange: tuple[int, int],
        open_exchange: tuple[int, int],
        current_round: int,
        is_neighbour: bool,
    ) -> None:
        """Raise Refused unless the update may be buffered. A refusal changes nothing but a
        neighbour's claim, and that only for `too_early` and `stale`; `put` records an
        accepted one."""
        if exchange < open_exchange:
            if is_neighbour:  # it is alive, and behind us: its word counts in the quorum
                self._saw(sender, exchange[0])
            raise Refused("stale")
        if not is_neighbour:
            raise Refused("not_a_neighbour")
        if exchange[1] >= self.steps_per_round:
            raise Refused("no_such_step")
        if exchange[0] > current_round + self.max_future_rounds:
            self._saw(sender, exchange[0])
            raise Refused("too_early")
        buffer = self._buffers.get(exchange)
        if buffer is not None and sender in buffer.states:
            raise Refused("duplicate")

    def put(
        self, *, sender: str, exchange: tuple[int, int], state: dict[str, torch.Tensor], size: int
    ) -> None:
        buffer = self._buffers.setdefault(exchange, ExchangeBuffer())
        buffer.states[sender] = state
        buffer.bytes_received += size
        self._saw(sender, exchange[0]).accepted += 1

    def heard(self, exchange: tuple[int, int]) -> set[str]:
        buffer = self._buffers.get(exchange)
        return set(buffer.states) if buffer else set()

    def take(self, exchange: tuple[int, int]) -> ExchangeBuffer:
        return self._buffers.pop(exchange, ExchangeBuffer())

    def drop_senders(self, keep: frozenset[str]) -> None:
        """Forget buffered updates and claims of senders that are no longer neighbours
        (roster reload)."""
        for sender in [s for s in self.neighbours if s not in keep]:
            del self.neighbours[sender]
        for buffer in self._buffers.values():
            for sender in [s for s in buffer.states if s not in keep]:
                del buffer.states[sender]

    def drop_before(self, exchange: tuple[int, int]) -> None:
        for old in [k for k in self._buffers if k < exchange]:
            del self._buffers[old]

    def furthest_round(self) -> int | None:
        """The highest single claim (status only: one neighbour's word moves nothing)."""
        rounds = [s.last_round for s in self.neighbours.values() if s.last_round is not None]
        return max(rounds) if rounds else None

    def claims(self) -> dict[str, Claim]:
        return {
            n: Claim(round=s.last_round, heard_at=s.last_heard)
            for n, s in self.neighbours.items()
            if s.last_round is not None and s.last_heard is not None
        }

    def quorum_round(
        self, *, neighbours: frozenset[str], window_s: float, quorum: int | None = None
    ) -> int | None:
        """The round a majority of the `neighbours` heard within `window_s` claims."""
        return quorum_round(
            self.claims(),
            neighbours=neighbours,
            now=self._wall_clock(),
            window_s=window_s,
            quorum=quorum,
        )

    def moved_past(self, sender: str, round: int) -> bool:
        stats = self.neighbours.get(sender)
        return stats is not None and stats.last_round is not None and stats.last_round > round

    def _saw(self, sender: str, round: int) -> NeighbourStats:
        stats = self.neighbours.setdefault(sender, NeighbourStats())
        stats.last_heard = self._wall_clock()
        claim = capped(round)
        stats.last_round = claim if stats.last_round is None else max(stats.last_round, claim)
        return stats
