"""The asynchronous round driver: one Peer over one Transport, in real time.

The daemon runs exactly this (tests run it over the in-memory transport):

    round r:  train + seal  ->  deliver to every neighbour, retrying until the exchange's
              deadline  ->  wait until every awaited neighbour is heard, or is known to be
              past r, or the deadline (`round_timeout_s` after sending) passes  ->  mix
              (and, for the last exchange, checkpoint and record)  ->  round r + 1

With k exchanges per round the send-wait-mix part runs k times, each with its own deadline;
after the first exchange a site waits only for neighbours it heard in the previous one, and
stops retrying the others when the wait ends, so a dead neighbour costs one timeout per round.
Nobody waits longer than one timeout for anybody: a slow or dead site never stalls its
neighbours. A site that learns from authentic updates that a majority of its recently heard
graph neighbours is past its round jumps ahead to their round (at most MAX_JUMP_ROUNDS per
jump, never to FINAL_ROUND) without training for the rounds it skipped, nor for the rounds it
runs while still behind; that is how a restarted site rejoins (node.round.progress). One
neighbour's word alone moves a site only where it is the only one heard.

Stragglers (measured in docs/benchmarks/deployment.md, scripts/bench_straggler.py): each
neighbour has its own wait, adapted to when its updates arrived in recent exchanges and never
longer than the round timeout (node.round.patience), so a much slower neighbour no longer sets
everybody's pace. And a site whose training ends after its neighbours moved past its round
offers the trained state in the round after theirs (`Peer.defer_round`) instead of sealing it
for a round they already closed, where it would be refused as stale: its update arrives before
they open that round and is mixed there. Admission is unchanged: no stale or replayed round is
ever accepted.

With secure aggregation (a `SecureSession`, node.round.secure_session) a round is one exchange
of signed secure-aggregation frames instead of sealed updates: the own instance opens before
training, the contributions leave after it, each phase closes at its share of the round
timeout, and the round mixes the aggregate (or skips, audited) when the own instance is over.
Frames ride the same transport; the pump tells them from envelopes by their magic prefix.

With `offload=True` (the daemon) training, sealing, opening and mixing run in a worker thread
so the trio loop keeps reading streams meanwhile (node.round.offload).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from gossipmed.consortium.audit import payload_hash
from gossipmed.errors import GossipmedError, TransportError
from gossipmed.metrics import RoundRecord
from node.net.transport import Transport
from node.report.evaluation import describe as describe_eval
from node.round.catch_up import CatchUp
from node.round.driver_state import MAX_SKIP_RECORDS, DriverState
from node.round.neighbour_wait import await_neighbours
from node.round.offload import Offload
from node.round.patience import Patience, PatienceSettings
from node.round.peer import Peer
from node.round.progress import FINAL_ROUND, RoundLimitReached
from node.round.reachability import Reachability
from node.round.secure_frame import is_frame
from node.round.secure_session import Outbox, SecureSession
from node.rounds import shown

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_PAUSE_S = 1.0
SURVIVED = (GossipmedError, ArithmeticError, ValueError, RuntimeError)
"""Failures of a round that a daemon survives (audited); OSError and MemoryError end it."""


class RoundDriver:
    def __init__(
        self,
        peer: Peer,
        transport: Transport,
        *,
        round_timeout_s: float = 30.0,
        offload: bool = False,
        retry_pause_s: float = RETRY_PAUSE_S,
        before_send: Callable[[int, int], None] | None = None,
        audit_hashes: bool = False,
        patience: PatienceSettings | None = None,
        secure: SecureSession | None = None,
    ) -> None:
        """`before_send(round, step)` runs after sealing and before anything leaves (the
        daemon records that an exchange's updates may be out). `audit_hashes` puts each
        message's BLAKE2b in the audit events. `patience`: how the per-neighbour waits adapt
        (node.round.patience; each is at most the round timeout)."""
        self.peer = peer
        self.transport = transport
        self.round_timeout_s = round_timeout_s
        self.offload = offload
        self.retry_pause_s = retry_pause_s
        self.before_send = before_send
        self.audit_hashes = audit_hashes
        self.state = DriverState(round=peer.round)
        self.reachability = Reachability(log)  # outages logged once (node.round.reachability)
        self.patience = Patience(patience)
        self._arrival = trio.Event()
        self._rounds = 0  # run()'s limit, which a deferred round must not pass
        self._started = -math.inf  # when run() began (catch-up's quorum rule)
        self._own_work_s = 0.0  # this round's training and sealing time
        self._steps = Offload(enabled=offload)
        self.secure = secure
        self._catch_up = CatchUp(peer, round_timeout_s=round_timeout_s, secure=secure)
        self._sends: trio.Nursery | None = None
        if secure is not None and not peer.secure:
            raise TransportError("a secure session needs a peer built for secure aggregation")

    @property
    def send_failures(self) -> int:
        return self.state.failures

    # -- receiving ----------------------------------------------------------------------------

    async def pump(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled or the transport closes."""
        async with trio.open_nursery() as sends:
            self._sends = sends
            task_status.started()
            while True:
                try:
                    site, data = await self.transport.receive_from()
                except TransportError:
                    sends.cancel_scope.cancel()
                    return
                try:
                    if self.secure is not None and is_frame(data):
                        self.state.bytes_received += len(data)
                        self._send_frames(await self._call(self.secure.handle, site, data))
                    elif await self._call(self._receive, data, site):
                        self.state.bytes_received += len(data)
                except Exception as exc:  # nothing a peer sends ends the daemon
                    log.exception("a message from %s could not be handled", site)
                    self.peer.audit.record(
                        "receive_failed", site=self.peer.name, sender=site, reason=repr(exc)
                    )
                arrived, self._arrival = self._arrival, trio.Event()
                arrived.set()

    def _send_frames(self, frames: Outbox) -> None:
        """Secure-aggregation frames go out in the background, a few tries each within one
        phase's share of the timeout; a lost frame is the protocol's dropout, not an error."""
        if self._sends is None:
            raise TransportError("the driver's pump is not running")
        for recipient, data in frames:
            self._sends.start_soon(self._send_frame, recipient, data)

    async def _send_frame(self, recipient: str, data: bytes) -> None:
        share = self.round_timeout_s / 5 if math.isfinite(self.round_timeout_s) else 60.0
        with trio.move_on_after(share):
            await self._send_retrying(recipient, data, what="secure frame")

    def _receive(self, data: bytes, via: str) -> bool:
        return self.peer.receive(
            data, payload_hash=payload_hash(data) if self.audit_hashes else "", via=via
        )

    # -- rounds -------------------------------------------------------------------------------

    async def run(self, *, rounds: int = 0) -> None:
        """Rounds from the peer's current one until `rounds` are done (0: until cancelled),
        or until FINAL_ROUND is reached (audited; the caller exits 0)."""
        self._rounds = rounds
        self._started = trio.current_time()
        r = self.peer.round
        while not rounds or r < rounds:
            if r >= FINAL_ROUND:
                self._final_round_reached(r)
                return
            target = self._catch_up_target(r)
            if target is not None:
                log.info(
                    "a quorum of neighbours is ahead: skipping rounds %d..%d",
                    shown(r),
                    shown(target - 1),
                )
                self.state.skipped = [*self.state.skipped, (r, target - 1)][-MAX_SKIP_RECORDS:]
                self.peer.force_keyframes(1)  # neighbours' copies of us miss the skipped rounds
                r = target
                if r >= FINAL_ROUND:
                    continue
            # still behind after a bounded jump: the round runs, without training
            try:
                record = await self.run_round(r, catching_up=self._catch_up_target(r) is not None)
            except RoundLimitReached:
                self._final_round_reached(r)
                return
            except SURVIVED as exc:
                r = await self._round_failed(r, exc)
                continue
            log.info(
                "round %d done: heard %d/%d, loss %s, eps %.3f, local D %.3e, %.2f s%s",
                shown(record.round),
                record.neighbours_heard,
                record.neighbours_expected,
                record.train_loss,
                record.epsilon,
                record.consensus_distance or 0.0,
                record.seconds,
                f"; {evaluated}" if (evaluated := describe_eval(record)) else "",
            )
            r = record.round + 1
            if self.secure is not None and self.peer.budget_spent:
                await self._rest_spent(r, rounds=rounds)
                return

    async def _rest_spent(self, round: int, *, rounds: int) -> None:
        """Under secure aggregation a site whose budget is spent runs no further rounds:
        without training its state would be a public linear function of sums its neighbours
        already hold, so it neither contributes nor aggregates (they count it as a dropout).
        It keeps serving its status; with a planned number of rounds it stops (exit 0)."""
        self.state.phase = "budget_spent"
        self.peer.audit.record("secure_rounds_stopped", site=self.peer.name, round=round)
        log.warning("privacy budget spent under secure aggregation: no further rounds")
        if not rounds:
            await trio.sleep_forever()

    async def _round_failed(self, round: int, exc: Exception) -> int:
        """A round that raised on the way from the network through mix, seal and checkpoint
        (say, a state a neighbour's update made unsealable) is audited and given up; the site
        goes on with the next round after one round timeout (so a failure that repeats does
        not spin). Returns that round. Local failures (OSError: a full disk) still end the
        daemon, for its supervisor to restart."""
        ran = max(round, self.state.round)  # _defer may have moved the round on
        log.error("round %d failed and is given up: %s", shown(ran), exc)
        self.state.failed_rounds += 1
        self.state.phase = "round_failed"
        self.peer.audit.record("round_failed", site=self.peer.name, round=ran, reason=repr(exc))
        self.peer.force_keyframes(1)  # whatever left of this round, neighbours' replicas lag
        pause = self.round_timeout_s if math.isfinite(self.round_timeout_s) else RETRY_PAUSE_S
        await trio.sleep(pause)
        return max(ran + 1, self.peer.round)

    def _final_round_reached(self, round: int) -> None:
        log.warning("round %d is the last a site may reach: stopping", shown(round))
        self.state.phase = "final_round"
        self.peer.audit.record("final_round_reached", site=self.peer.name, round=round)

    async def run_round(
        self, round: int, *, timeout: float | None = None, catching_up: bool = False
    ) -> RoundRecord:
        """Train (not when `catching_up`: a quorum of neighbours is further ahead than one
        jump), then `peer.gossip_steps` exchanges, each waiting up to the round timeout.
        The record is of a later round when training ended after the neighbours had moved
        past `round` (see `_defer`)."""
        wait = self.round_timeout_s if timeout is None else timeout
        if self.secure is not None:
            return await self._run_secure_round(round, self.secure, catching_up=catching_up)
        self.state.round, self.state.phase = round, "catching up" if catching_up else "training"
        started = trio.current_time()
        await self._call(self.peer.train, round, catching_up, abandon=True)
        if not catching_up:
            round = self._defer(round)
        for step in range(self.peer.gossip_steps):
            if step > 0:
                self.state.phase = "mixing"
                await self._call(self.peer.mix_step, round, step - 1, abandon=True)
            envelopes = await self._call(self.peer.seal_outgoing, round, step, abandon=True)
            if step == 0:
                self._own_work_s = trio.current_time() - started
            if self.before_send is not None:
                self.before_send(round, step)
            self.state.phase = "exchanging"
            await self._exchange(round, step, envelopes, wait)
        self.state.phase = "mixing"
        record = await self._call(self.peer.complete_round, round)
        self.state.completed += 1
        self.state.last_record = record
        return record

    def _catch_up_target(self, round: int) -> int | None:
        """Where a site at `round` jumps; None: no jump (node.round.catch_up)."""
        return self._catch_up.target(round, rounds=self._rounds, started=self._started)

    async def _run_secure_round(
        self, round: int, secure: SecureSession, *, catching_up: bool = False
    ) -> RoundRecord:
        """Open the own instance, train, contribute, run the phases until the own instance
        is over (each phase bounded by its share of the timeout), mix the aggregate."""
        self.state.round, self.state.phase = round, "catching up" if catching_up else "training"
        self._send_frames(await self._call(secure.open, round))
        await self._call(self.peer.train, round, catching_up, abandon=True)
        state = self.peer.secure_input(round)
        if self.before_send is not None:
            self.before_send(round, 0)
        self.state.phase = "exchanging"
        self._send_frames(await self._call(secure.begin, round, state))
        while not secure.settled(round):
            self._send_frames(await self._call(secure.tick))
            if secure.settled(round):
                break
            # the session's clock is time.monotonic (it also runs in worker threads)
            with trio.move_on_after(max(0.0, secure.next_deadline(round) - secure.clock())):
                await self._arrival.wait()
        self.peer.accept_secure(round, secure.outcome(round))
        self.state.phase = "mixing"
        record = await self._call(self.peer.complete_round, round)
        self.state.completed += 1
        self.state.last_record = record
        return record

    def _defer(self, round: int) -> int:
        """After training: if a quorum of recently heard neighbours is already past `round`
        (node.round.progress), an update for `round` would be refused as stale where it is
        late, so the trained state goes into the round after theirs (buffered by them until
        they open it), at most MAX_JUMP_ROUNDS on. Returns the round the exchanges run in."""
        deferral = self._catch_up.deferral(round, rounds=self._rounds, started=self._started)
        if deferral is None:
            return round
        ahead, target = deferral
        log.info(
            "training ended after neighbours reached round %d: offering it in round %d",
            shown(ahead),
            shown(target),
        )
        self.state.skipped = [*self.state.skipped, (round, target - 1)][-MAX_SKIP_RECORDS:]
        self.state.deferred += 1
        self.peer.force_keyframes(1)  # neighbours' copies of us miss the rounds in between
        self.peer.defer_round(round, target)
        self.state.round = target
        return target

    async def _exchange(
        self, round: int, step: int, envelopes: dict[str, bytes], wait: float
    ) -> None:
        start = trio.current_time()
        deadline = start + (wait if math.isfinite(wait) else math.inf)
        awaited = self.peer.expected(round, step)
        waits = {
            n: self.patience.wait_s(n, own_work_s=self._own_work_s, timeout_s=wait)
            for n in sorted(awaited)
        }
        self.state.waits = waits
        scopes: dict[str, trio.CancelScope] = {}
        async with trio.open_nursery() as sends:
            for recipient, data in envelopes.items():
                scopes[recipient] = scope = trio.CancelScope()
                deliver = functools.partial(self._deliver, awaited=recipient in awaited)
                sends.start_soon(deliver, recipient, data, deadline, scope)
            await await_neighbours(
                self.peer,
                self.patience,
                round=round,
                step=step,
                start=start,
                waits=waits,
                arrival=lambda: self._arrival,
            )
            heard = self.peer.heard(round, step)
            for recipient, scope in scopes.items():
                # not heard: silent before, waited out, or already past this round; so a dead
                # neighbour costs one (adapted) wait per round, not the exchange's deadline
                if recipient not in heard:
                    scope.cancel()

    async def _deliver(
        self,
        recipient: str,
        data: bytes,
        deadline: float,
        scope: trio.CancelScope,
        *,
        awaited: bool,
    ) -> None:
        """Keep trying until the exchange's deadline: a neighbour that is (re)starting still
        gets this exchange's update if it comes up in time. `scope` is cancelled when the wait
        ends without the neighbour's update (it is silent, slow or already past the round).
        Giving up on an awaited neighbour counts as a failure."""
        with scope, trio.move_on_at(deadline):
            await self._send_retrying(recipient, data, what="update")
            return
        if awaited:
            self.state.failures += 1
            self.reachability.gave_up(recipient)
        self.peer.force_keyframes(1)  # its copy of us misses an exchange

    async def _send_retrying(self, recipient: str, data: bytes, *, what: str) -> None:
        """Send until it goes through; the caller's cancel scope bounds the attempts."""
        while True:
            try:
                await self.transport.send(recipient, data)
                self.state.bytes_sent += len(data)
                self.reachability.delivered(recipient)
                return
            except TransportError as exc:
                log.debug("%s to %s failed, retrying: %s", what, recipient, exc)
            await trio.sleep(self.retry_pause_s)

    async def _call(self, fn: Callable[..., T], *args: Any, abandon: bool = False) -> T:
        """A step inline, or in a worker thread (node.round.offload)."""
        return await self._steps.call(fn, *args, abandon=abandon)

    def wait_idle(self, timeout: float) -> bool:
        """Until no offloaded step runs; False after `timeout` (node.round.offload)."""
        return self._steps.wait_idle(timeout)


async def run_round(peer: Peer, transport: Transport, round: int, *, timeout: float) -> RoundRecord:
    """One round with a pump that lives only as long as the round (tests, one-shot tools)."""
    driver = RoundDriver(peer, transport, round_timeout_s=timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.pump)
        record = await driver.run_round(round)
        nursery.cancel_scope.cancel()
    return record
