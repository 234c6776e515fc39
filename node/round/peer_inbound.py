"""The receiving half of a Peer: admitting updates into its inbox, and what it has heard.

Kept apart from the phases that train and mix (node.round.peer) because this path runs on
the transport's side, concurrently with them, and every byte it handles is hostile: all it
touches is the inbox, the sealer's replay state and the rejection count, each under the
peer's lock. `Peer` inherits it; the attributes below are the ones Peer's __init__ sets.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch

from gossipmed.errors import GossipmedError
from gossipmed.wire.compression import ReplicaDecoder
from gossipmed.wire.update import Sealer, Update
from node.round.audit import AuditSink
from node.round.inbox import Inbox, NeighbourStats, Refused
from node.round.work import RoundWork
from topology.schedule import MixingSchedule

Schema = dict[str, tuple[str, tuple[int, ...]]]
"""Tensor name -> (dtype name, shape): what a neighbour's update must look like, exactly."""


def state_schema(state: Mapping[str, torch.Tensor]) -> Schema:
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}


class PeerInbound:
    """Admission and the heard/pending queries; see the module docstring."""

    name: str
    secure: bool
    sealer: Sealer
    decoder: ReplicaDecoder
    schedule: MixingSchedule
    schema: Schema
    audit: AuditSink
    round: int
    rejected: int
    _work: RoundWork | None
    _inbox: Inbox
    _lock: threading.Lock

    # -- phase 4+5: receive and verify ------------------------------------------------------

    def receive(self, data: bytes, *, payload_hash: str = "", via: str | None = None) -> bool:
        """Verify and buffer one update; True if kept. Bad input is audited, never raised.
        With secure aggregation no individual update is opened: it is refused unread.
        `via`: the transport-authenticated sender; a refusal that comes before the envelope's
        own sender is verified is audited as its (so it counts against that member's
        refused-record budget, not everyone's, and names who sent it)."""
        carrier = {} if via is None else {"sender": via}
        if self.secure:
            return self._reject(
                "secure_aggregation", size=len(data), payload_hash=payload_hash, **carrier
            )
        claimed: dict[str, Any] = {}
        admitted: dict[str, torch.Tensor] = {}

        def admit(update: Update) -> None:
            """Inside the sealer: after verification, before its replay state moves."""
            r, step = update.exchange
            claimed.update(sender=update.sender, msg_round=r, step=step)
            self._inbox.check(
                sender=update.sender,
                exchange=update.exchange,
                open_exchange=self._open_exchange(),
                current_round=self.round,
                is_neighbour=update.sender in self.schedule.neighbours(r, self.name),
            )
            admitted.update(self.decoder.decode(update))  # DeltaOutOfSync: replica behind

        with self._lock:
            try:
                update = self.sealer.open(data, expected_schema=self.schema, admit=admit)
            except Refused as exc:
                return self._reject(exc.reason, payload_hash=payload_hash, **claimed)
            except GossipmedError as exc:
                return self._reject(
                    "invalid",
                    detail=str(exc),
                    size=len(data),
                    payload_hash=payload_hash,
                    **{**carrier, **claimed},
                )
            self._inbox.put(
                sender=update.sender, exchange=update.exchange, state=admitted, size=len(data)
            )
            self.audit.record(
                "accepted", site=self.name, size=len(data), payload_hash=payload_hash, **claimed
            )
            return True

    def heard(self, round: int, step: int = 0) -> set[str]:
        with self._lock:
            return self._inbox.heard((round, step))

    def expected(self, round: int, step: int = 0) -> frozenset[str]:
        """Whom to wait for. After the first exchange, only those heard in the previous one:
        a neighbour that is offline costs one timeout per round, not one per exchange."""
        neighbours = self.schedule.neighbours(round, self.name)
        work = self._work
        if step == 0 or work is None or work.round != round or work.heard_last is None:
            return neighbours
        return neighbours & work.heard_last

    def pending(self, round: int, step: int = 0) -> set[str]:
        """Expected neighbours neither heard in this exchange nor known to be past `round`."""
        heard = self.heard(round, step)
        with self._lock:
            return {
                n
                for n in self.expected(round, step)
                if n not in heard and not self._inbox.moved_past(n, round)
            }

    def furthest_neighbour_round(self) -> int | None:
        """The highest round one graph neighbour claimed (status; it moves nothing)."""
        with self._lock:
            return self._inbox.furthest_round()

    def quorum_round(self, *, window_s: float, quorum: int | None = None) -> int | None:
        """The highest round a majority of this round's neighbours heard within `window_s`
        (and at least `quorum` of them) claims (node.round.progress): what catch-up may
        jump to."""
        neighbours = self.schedule.neighbours(self.round, self.name)
        with self._lock:
            return self._inbox.quorum_round(neighbours=neighbours, window_s=window_s, quorum=quorum)

    def neighbour_stats(self) -> dict[str, NeighbourStats]:
        with self._lock:
            return {k: NeighbourStats(**vars(v)) for k, v in self._inbox.neighbours.items()}

    def _open_exchange(self) -> tuple[int, int]:
        """Updates for exchanges before this one can no longer be mixed (stale)."""
        work = self._work
        step = work.step if work is not None and work.round == self.round else 0
        return (self.round, step)

    def _reject(self, reason: str, **fields: Any) -> bool:
        self.rejected += 1
        self.audit.record("rejected", site=self.name, reason=reason, round=self.round, **fields)
        return False

    def _take_rejected(self) -> int:
        with self._lock:
            n, self.rejected = self.rejected, 0
        return n
