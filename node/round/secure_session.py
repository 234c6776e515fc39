"""One site's secure-aggregation exchanges over a real transport (the daemon's side).

Synchronous and transport-agnostic, like the Peer: node.round.driver feeds it frames and the
clock and sends what it returns. Per round r the site is

- the receiver of its own instance (an Aggregator, opened with `open(r)` before training so
  that early neighbours' keys are kept), and
- a contributor to each neighbour's instance (Contributors, created by `begin(r, state)`
  after training, once the ContributionGuard that refuses a second contribution to the same
  instance has been persisted).

Fresh training only: `begin` gets the state of a round whose local training step completed,
or None. None contributes to nobody and gets no sum of its own (`outcome` is skipped): the
guard's ticket for the round is issued only here, from a trained state, and both the
contributions and the own aggregate need it (gossipmed.mixing.secagg.guard).

Phases share the exchange's deadline: phase k of the own instance closes (Aggregator
.deadline) at begin + (k + 1) x timeout / 5 if not every expected party has sent by then.
Frames for a later round are buffered (a few per neighbour) and replayed when that round
opens; they also tell the driver that a neighbour is ahead (catch-up after a restart).
Frames for a closed round, from non-neighbours, badly signed or malformed are refused and
counted; a contributor that refuses a message aborts its own part of that instance.

When the own instance's sums keep failing the public bounds, `open` excludes at most one
suspect per round, drawn from the OS CSPRNG (gossipmed.mixing.secagg.suspects), and
`outcome` audits the contributor named after repeated, consistent trials
(node.round.secure_neighbours, with the round claims).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from nacl.signing import SigningKey

from gossipmed.errors import GossipmedError
from gossipmed.mixing.secagg import (
    Aggregator,
    ContributionGuard,
    Contributor,
    DeclaredDropped,
    ExchangeAborted,
    FixedPoint,
    InstanceConfig,
    Message,
    MessageLimits,
    instance_config,
)
from gossipmed.mixing.secagg.envelope import NormEnvelope, resolve
from gossipmed.mixing.secagg.params import MAX_CONTRIBUTORS
from gossipmed.mixing.secagg.suspects import SuspectSearch
from gossipmed.wire.update import MAX_ROUND
from node.round.secure_frame import open_frame, seal_frame
from node.round.secure_mix import SecureOutcome
from node.round.secure_neighbours import RoundClaims, judge
from topology.schedule import MixingSchedule

PHASES = 5
MAX_BUFFERED_PER_SENDER = 4
NOT_FRESH = "no local training step this round: no secure exchange without fresh training"
Outbox = list[tuple[str, bytes]]
T = TypeVar("T")


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    """The daemon runs the protocol's heavy steps (masks, unmasking) in worker threads, one
    at a time per call site; the session's state is changed under one lock."""

    @functools.wraps(method)
    def wrapper(self: SecureSession, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class _Own:
    round: int
    aggregator: Aggregator | None
    skipped: str | None = None
    begun_at: float | None = None


class SecureSession:
    def __init__(
        self,
        *,
        name: str,
        signing_key: SigningKey,
        sign_keys: Mapping[str, bytes],
        roster_hash: bytes,
        schedule: MixingSchedule,
        schema: Mapping[str, tuple[int, ...]],
        fixed_point: FixedPoint | NormEnvelope,
        timeout_s: float,
        guard: ContributionGuard | None = None,
        persist_guard: Callable[[ContributionGuard], None] | None = None,
        audit: Callable[..., None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._key = signing_key
        self.sign_keys = dict(sign_keys)
        self.roster_hash = roster_hash
        self.schedule = schedule
        self.schema = {k: tuple(v) for k, v in schema.items()}
        coords = sum(math.prod(shape) for shape in self.schema.values())
        self.fixed_point = resolve(fixed_point, coords)
        self.suspects = SuspectSearch()
        self.timeout_s = timeout_s
        self.guard = guard if guard is not None else ContributionGuard()
        self._persist = persist_guard
        self._audit = audit or (lambda event, **fields: None)
        self.clock = clock
        coords_config = self._config(name, 0)
        self.limits = MessageLimits(
            max_contributors=MAX_CONTRIBUTORS, masked_bytes=coords_config.masked_bytes
        )
        self._own: _Own | None = None
        self._contributors: dict[tuple[str, int], Contributor] = {}
        self._buffer: dict[str, list[tuple[int, bytes, float]]] = defaultdict(list)
        self._claims = RoundClaims()
        self.refused = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._lock = threading.RLock()

    # -- configuration --------------------------------------------------------------------

    def _config(self, receiver: str, round: int) -> InstanceConfig:
        neighbours = sorted(self.schedule.neighbours(round, receiver))
        row = self.schedule.row(round, receiver)
        return instance_config(
            receiver=receiver,
            neighbours=neighbours,
            weights={j: row[j] for j in neighbours},
            sign_keys={j: self.sign_keys[j] for j in neighbours},
            schema=self.schema,
            roster_hash=self.roster_hash,
            round=round,
            fixed_point=self.fixed_point,
        )

    def _frame(self, recipient: str, message: Message) -> tuple[str, bytes]:
        data = seal_frame(
            message,
            sender=self.name,
            recipient=recipient,
            roster_hash=self.roster_hash,
            key=self._key,
        )
        self.bytes_sent += len(data)
        return recipient, data

    @_locked
    def set_roster(
        self, *, roster_hash: bytes, sign_keys: Mapping[str, bytes], schedule: MixingSchedule
    ) -> None:
        """A reloaded consortium file (a revocation): instances opened from now on use it."""
        self.roster_hash = roster_hash
        self.sign_keys = dict(sign_keys)
        self.schedule = schedule
        self._buffer.clear()
        self._claims.clear()  # a revoked member's claims no longer count

    @property
    def furthest_round(self) -> int | None:
        """The round a threshold of recently heard neighbours claims in signed frames, or None
        (node.round.secure_neighbours: one neighbour alone cannot make the site jump)."""
        with self._lock:
            current = self._own.round if self._own is not None else 0
            neighbours = self.schedule.neighbours(current, self.name)
            return self._claims.furthest(neighbours, now=self.clock(), timeout_s=self.timeout_s)

    # -- the round ------------------------------------------------------------------------

    @_locked
    def open(self, round: int) -> Outbox:
        """Open this site's own instance of `round` (before training) and take the frames
        neighbours sent for it early. Contributions to older rounds are given up."""
        for key in [k for k in self._contributors if k[1] < round - 1]:
            self._contributors.pop(key).abort()
        try:
            config = self._config(self.name, round)
            exclude = self.suspects.exclusion(config.contributors, config.threshold)
            aggregator: Aggregator | None = Aggregator(config, exclude=exclude)
            skipped = None
        except GossipmedError as exc:
            aggregator, skipped = None, f"no instance: {exc}"
        self._own = _Own(round=round, aggregator=aggregator, skipped=skipped)
        out: Outbox = []
        for sender, frames in list(self._buffer.items()):
            keep = [f for f in frames if f[0] > round]
            for r, data, arrived in frames:
                if r == round:
                    out += self.handle(sender, data, arrived=arrived)
            self._buffer[sender] = keep
        return out

    @_locked
    def begin(self, round: int, state: Mapping[str, torch.Tensor] | None) -> Outbox:
        """After training: contribute `state` to every neighbour's instance of `round`. The
        guard is persisted before any advertisement leaves. `state` None (no training step
        completed in `round`) contributes nothing, and the own instance yields no sum."""
        own = self._require(round)
        own.begun_at = self.clock()
        if state is None:  # what the own instance has collected is dropped unread
            if own.aggregator is not None:
                own.aggregator, own.skipped = None, NOT_FRESH
            self._audit("secure_not_fresh", site=self.name, round=round)
            return []
        self.guard.note_trained(round)
        created: dict[str, Contributor] = {}
        for receiver in sorted(self.schedule.neighbours(round, self.name)):
            try:
                created[receiver] = Contributor(
                    self._config(receiver, round),
                    name=self.name,
                    signing_key=self._key,
                    values=state,
                    guard=self.guard,
                )
            except GossipmedError as exc:
                self._audit(
                    "secure_contribution_refused",
                    site=self.name,
                    round=round,
                    receiver=receiver,
                    reason=str(exc),
                )
        if self._persist is not None:
            self._persist(self.guard)
        self._contributors.update({(r, round): c for r, c in created.items()})
        return [self._frame(r, c.advertise()) for r, c in created.items()]

    @_locked
    def handle(self, sender: str, data: bytes, *, arrived: float | None = None) -> Outbox:
        """One inbound frame from the transport's authenticated `sender`. `arrived`: when a
        buffered frame came in (a replay must not make its sender look recently heard)."""
        try:
            claimed, message = open_frame(
                data,
                recipient=self.name,
                roster_hash=self.roster_hash,
                sign_keys=self.sign_keys,
                limits=self.limits,
            )
            if claimed != sender:
                raise GossipmedError(f"frame signed by {claimed!r} on {sender!r}'s connection")
            inst = message.instance
            if inst.roster_hash != self.roster_hash:
                raise GossipmedError("frame of another consortium file")
            if inst.round > MAX_ROUND:  # as for updates: a member cannot push us to 2**63
                raise GossipmedError(f"round {inst.round} is above {MAX_ROUND}")
            if sender not in self.schedule.neighbours(inst.round, self.name):
                raise GossipmedError(f"{sender!r} is not a neighbour")
        except GossipmedError as exc:
            return self._refuse(sender, str(exc))
        self.bytes_received += len(data)
        now = self.clock() if arrived is None else arrived
        own = self._own
        current = own.round if own is not None else -1
        if inst.round > current:
            self._claims.note(sender, inst.round, now=now)
            if inst.receiver == self.name:
                frames = self._buffer[sender]
                if len(frames) < MAX_BUFFERED_PER_SENDER:
                    frames.append((inst.round, data, now))
                return []
        try:
            if inst.receiver == self.name:
                if own is not None and inst.round == own.round and own.skipped == NOT_FRESH:
                    return []  # this site did not train: its instance is closed, quietly
                if own is None or own.aggregator is None or inst.round != own.round:
                    raise GossipmedError(f"no open own instance for round {inst.round}")
                relayed = own.aggregator.receive(sender, message)
                self._claims.note(sender, inst.round, now=now)
                return [self._frame(r, m) for r, m in relayed]
            if inst.receiver != sender:
                raise GossipmedError("a receiver's message relayed by someone else")
            contributor = self._contributors.get((sender, inst.round))
            if contributor is None:
                raise GossipmedError(f"not contributing to {sender!r} round {inst.round}")
            reply = contributor.handle(sender, message)
            self._claims.note(sender, inst.round, now=now)
            return [self._frame(sender, reply)]
        except DeclaredDropped as exc:  # the receiver excluded this contribution: it is over
            self._audit(
                "secure_contribution_excluded", site=self.name, receiver=sender, reason=str(exc)
            )
            return []
        except GossipmedError as exc:
            return self._refuse(sender, str(exc))

    @_locked
    def tick(self) -> Outbox:
        """Close the own instance's phases whose share of the deadline is over."""
        own = self._own
        if own is None or own.aggregator is None or own.begun_at is None:
            return []
        agg = own.aggregator
        out: Outbox = []
        while not agg.finished and self.clock() >= self.phase_deadline():
            out += [self._frame(r, m) for r, m in agg.deadline()]
        return out

    def phase_deadline(self) -> float:
        """When the own instance's current phase closes (inf before `begin`)."""
        own = self._own
        if own is None or own.aggregator is None or own.begun_at is None:
            return float("inf")
        share = self.timeout_s / PHASES
        return own.begun_at + (min(int(own.aggregator.phase), PHASES - 1) + 1) * share

    def finished(self, round: int) -> bool:
        own = self._require(round)
        return own.aggregator is None or own.aggregator.finished

    def settled(self, round: int) -> bool:
        """The round may end: the own instance is over, and each contribution of this round
        has given its unmask shares, aborted, or stalled past its phase's share of the
        deadline (its receiver is dead, or declared this site dropped and will never
        answer); or the whole timeout since `begin` is spent. A stalled contribution is not
        abandoned: it still answers while the next round runs. Waiting for the contributions
        keeps neighbours in step: a site whose own instance ended early would otherwise open
        the next round before its neighbours could advertise in it."""
        self._require(round)
        now = self.clock()
        if now >= self.round_deadline():
            return True
        if not self.finished(round):
            return False
        return all(now >= deadline for deadline in self._waiting(round))

    def next_deadline(self, round: int) -> float:
        """The next moment `settled` or `tick` may change without a frame arriving."""
        now = self.clock()
        later = [d for d in self._waiting(round) if d > now]
        return min([self.phase_deadline(), self.round_deadline(), *later])

    def _waiting(self, round: int) -> list[float]:
        """Phase deadlines of this round's contributions that are not over."""
        own = self._own
        if own is None or own.begun_at is None:
            return []
        share = self.timeout_s / PHASES
        return [
            own.begun_at + (min(int(c.phase), PHASES - 1) + 1) * share
            for (_, r), c in list(self._contributors.items())  # a snapshot: handle() may run
            if r == round and not c.finished  # in a worker thread meanwhile
        ]

    def round_deadline(self) -> float:
        own = self._own
        if own is None or own.begun_at is None:
            return float("inf")
        return own.begun_at + self.timeout_s

    @_locked
    def outcome(self, round: int) -> SecureOutcome:
        """The own instance's result (or why there is none); bytes since the last outcome."""
        own = self._require(round)
        sent, received = self.bytes_sent, self.bytes_received
        self.bytes_sent = self.bytes_received = 0
        if own.aggregator is None:
            return SecureOutcome(skipped=own.skipped, bytes_sent=sent, bytes_received=received)
        if not self.guard.fresh_for(round):
            return SecureOutcome(skipped=NOT_FRESH, bytes_sent=sent, bytes_received=received)
        try:
            result = own.aggregator.result()
        except ExchangeAborted as exc:
            judge(self.suspects, exc, audit=self._audit, site=self.name, round=round)
            return SecureOutcome(
                skipped=f"{type(exc).__name__}: {exc}", bytes_sent=sent, bytes_received=received
            )
        except GossipmedError as exc:  # not finished: the round's time is up
            return SecureOutcome(
                skipped=f"unfinished: {exc}", bytes_sent=sent, bytes_received=received
            )
        dropped = sorted(set(own.aggregator.config.contributors) - set(result.contributors))
        if dropped:  # silent (dead, spent, late): a dropout, not an offence
            self._audit("secure_dropout", site=self.name, round=round, dropped=dropped)
        judge(self.suspects, result, audit=self._audit, site=self.name, round=round)
        return SecureOutcome(result=result, bytes_sent=sent, bytes_received=received)

    def _require(self, round: int) -> _Own:
        if self._own is None or self._own.round != round:
            raise GossipmedError(f"{self.name}: secure exchange of round {round} is not open")
        return self._own

    def _refuse(self, sender: str, reason: str) -> Outbox:
        self.refused += 1
        self._audit("secure_frame_refused", site=self.name, sender=sender, reason=reason)
        return []
