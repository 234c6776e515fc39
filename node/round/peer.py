"""One site's gossip round, transport-agnostic and synchronous.

The round is split into phases so the same object serves a lockstep, deterministic simulator
(which calls the phases itself) and the async daemon (node.round.driver, which interleaves
`receive` with waiting):

    train(r)              the local steps (skipped when off or the budget is spent)
    seal_outgoing(r, s)   exchange s's state, encoded and sealed once per neighbour
    receive(data)         open, verify, admit, buffer one update; never raises (peer_inbound)
    heard(r, s)           which neighbours' updates for exchange s of round r have arrived
    mix_step(r, s)        mix exchange s (not the last) into the state sent at exchange s + 1
    complete_round(r)     mix the last exchange (silent neighbours' weight -> self), checkpoint,
                          evaluate, return (and optionally write) one metrics record

A round has `gossip_steps` exchanges (multi-gossip): training happens once, then the state is
sent and mixed `gossip_steps` times, so one round contracts disagreement by about
lambda2 ** gossip_steps instead of lambda2 (docs/benchmarks/simulator.md). Updates carry their
exchange as `(round, step)`; every site of a consortium uses the same `gossip_steps` (it is in
the consortium file).

A peer is composed once, by node.round.builder, from its parts: learner (with drift
correction), sealer, encoder and decoder (codec), aggregator (mixing rule with parameters).
Every part with state between rounds exposes state_dict()/load_state_dict(); the checkpoint
loops over `components()`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from gossipmed.errors import GossipmedError, PrivacyBudgetExceeded
from gossipmed.learn.learner import AdapterState, Learner
from gossipmed.metrics import MetricsWriter, RoundRecord, local_consensus_distance
from gossipmed.mixing.bounds import InfluenceBound, state_norm
from gossipmed.mixing.rules import Aggregator
from gossipmed.storage.peer_state import Stateful, save_checkpoint
from gossipmed.wire.compression import DenseEncoder, ReplicaDecoder, UpdateEncoder
from gossipmed.wire.update import Sealer
from node.round.audit import AuditSink, NullAudit
from node.round.inbox import Inbox
from node.round.peer_inbound import PeerInbound, state_schema
from node.round.plain_mix import mix_states
from node.round.progress import FINAL_ROUND, RoundLimitReached
from node.round.secure_mix import SecureOutcome, mix_outcome
from node.round.work import RoundWork, offline_record, snapshot
from topology.schedule import MixingSchedule


class Peer(PeerInbound):
    """The gossip logic of one site; see the module docstring for the phase order."""

    def __init__(
        self,
        *,
        name: str,
        learner: Learner,
        sealer: Sealer,
        schedule: MixingSchedule,
        local_steps: int,
        gossip_steps: int = 1,
        encoder: UpdateEncoder | None = None,
        aggregator: Aggregator | None = None,
        mix_bound: InfluenceBound | None = None,
        train: bool = True,
        eval_every: int = 1,
        total_rounds: int | None = None,
        start_round: int = 0,
        max_future_rounds: int = 2,
        audit: AuditSink | None = None,
        checkpoint_dir: Path | None = None,
        metrics: MetricsWriter | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        secure: bool = False,
    ) -> None:
        if not schedule.has_site(name):
            raise GossipmedError(f"site {name!r} is not in the topology")
        if gossip_steps < 1:
            raise GossipmedError("gossip_steps must be >= 1 (resolve 'auto' before the peer)")
        if secure and gossip_steps != 1:
            raise GossipmedError("secure aggregation runs one exchange per round")
        self.secure = secure
        self.name = name
        self.learner = learner
        self.sealer = sealer
        self.encoder: UpdateEncoder = encoder if encoder is not None else DenseEncoder("raw")
        self.decoder = ReplicaDecoder(steps_per_round=gossip_steps)
        self.aggregator = aggregator if aggregator is not None else Aggregator()
        self.mix_bound = mix_bound if mix_bound is not None else InfluenceBound()
        self.schedule = schedule
        self.local_steps = local_steps
        self.gossip_steps = gossip_steps
        self.train_enabled = train
        self.eval_every = max(1, eval_every)
        self.total_rounds = total_rounds
        self.audit: AuditSink = audit or NullAudit()
        self.checkpoint_dir = checkpoint_dir
        self.metrics = metrics
        self.clock = clock
        self.round = start_round
        ledger = learner.ledger
        self.epsilon = float(ledger.epsilon) if ledger is not None else 0.0
        self.schema = state_schema(learner.get_state())
        self.rejected = 0
        self._budget_spent = False
        self._work: RoundWork | None = None
        self._inbox = Inbox(
            max_future_rounds=max_future_rounds, steps_per_round=gossip_steps, wall_clock=wall_clock
        )
        self._lock = threading.Lock()  # receive() may run while another thread trains

    @property
    def budget_spent(self) -> bool:
        """Training was refused because the privacy budget is spent (sticky for this run)."""
        return self._budget_spent

    def components(self) -> dict[str, Stateful]:
        """The parts whose state a checkpoint keeps (the sealer's goes inline)."""
        return {"encoder": self.encoder, "learner": self.learner}

    # -- phase 1+2+3: train, encode, seal ---------------------------------------------------

    def train(self, round: int, catching_up: bool = False) -> None:
        """Local steps for `round` (skipped when training is off or the budget is spent, and
        when its result is known beforehand to be unusable: see `untrainable`)."""
        if round >= FINAL_ROUND:  # could not be sealed: nothing may be charged for it
            raise RoundLimitReached(f"{self.name}: round {round} is past the last one run")
        self._start(round)
        work = self._work
        assert work is not None
        started = self.clock()
        before = snapshot(self.learner.get_state())
        reason = self.untrainable(before, catching_up=catching_up)
        if reason is not None:  # never charge privacy for a round known to be wasted
            self.audit.record(reason, round=round, site=self.name)
        elif self.train_enabled and not self._budget_spent:
            try:
                stats = self.learner.train_round(steps=self.local_steps)
            except PrivacyBudgetExceeded as exc:
                self._budget_spent = True
                self.audit.record("budget_spent", round=round, site=self.name, reason=str(exc))
            else:
                self.epsilon = stats.epsilon
                if math.isfinite(state_norm(self.learner.get_state())):
                    work.train_loss = stats.train_loss
                    work.trained = True
                else:  # the privacy is spent, the state is not kept
                    self.learner.set_state(before)
                    self.audit.record("non_finite_training", round=round, site=self.name)
        work.state = snapshot(self.learner.get_state())
        work.seconds += self.clock() - started

    def untrainable(self, state: Mapping[str, torch.Tensor], *, catching_up: bool) -> str | None:
        """Why training now would give a result known beforehand to be unusable (the audit
        event), or None. Charges stay spend-first: this is decided before training, never
        refunded after. A state outside the public norm envelope belongs here too."""
        if catching_up:  # the site jumps on: its neighbours are past this round
            return "catching_up"
        if not math.isfinite(state_norm(state)):
            return "non_finite_state"
        return None

    def seal_outgoing(self, round: int, step: int = 0) -> dict[str, bytes]:
        """The state of exchange `step` of this round, sealed once per neighbour of this
        round's graph (after training for step 0, after mix_step(step - 1) otherwise)."""
        work = self._require_work(round)
        if step != work.step:
            raise GossipmedError(f"{self.name}: exchange {step} of round {round} is not open")
        started = self.clock()
        neighbours = sorted(self.schedule.neighbours(round, self.name))
        out: dict[str, bytes] = {}
        if neighbours:
            tensors, codec = self.encoder.encode(work.state, round=round, step=step)
            with self._lock:
                out = self.sealer.seal_many(
                    update_tensors=tensors,
                    round=round,
                    step=step,
                    recipients=neighbours,
                    epsilon=self.epsilon,
                    codec=codec,
                )
        work.bytes_sent += sum(len(b) for b in out.values())
        work.seconds += self.clock() - started
        return out

    def outgoing(self, round: int) -> dict[str, bytes]:
        self.train(round)
        return self.seal_outgoing(round)

    def set_schedule(self, schedule: MixingSchedule) -> None:
        """A reloaded consortium file (a revocation): new neighbours and weights from now on;
        what a former neighbour sent and is still buffered is dropped, never mixed."""
        if not schedule.has_site(self.name):
            raise GossipmedError(f"site {self.name!r} is not in the new topology")
        with self._lock:
            self.schedule = schedule
            keep = frozenset(
                n for r in range(len(schedule.rows)) for n in schedule.neighbours(r, self.name)
            )
            self._inbox.drop_senders(keep)

    def defer_round(self, round: int, to: int) -> None:
        """Offer what train(round) produced in the later round `to` instead: training took so
        long that the neighbours are past `round`, where its update would only be refused as
        stale (the driver's catch-up). Only before anything of `round` was sealed."""
        work = self._require_work(round)
        if to <= round or work.step != 0 or work.bytes_sent:
            raise GossipmedError(f"{self.name}: cannot move round {round}'s work to round {to}")
        with self._lock:
            self.round = to
            work.round = to
            self._inbox.drop_before((to, 0))

    def force_keyframes(self, count: int = 1) -> bool:
        """The next `count` updates are dense: neighbours' copies of this site may be out of
        step (after a gap, a failed delivery, or a resume)."""
        return self.encoder.force_keyframes(count)

    # -- secure aggregation: the exchange runs outside, on masked messages --------------------

    def secure_input(self, round: int) -> AdapterState | None:
        """What this site contributes to its neighbours' secure exchanges of `round`: its
        state after a completed training step (each contributor clips, weights and masks it
        itself), or None when this round trained nothing (off, budget spent, non-finite):
        a training-free state is a public linear function of states already summed."""
        if not self.secure:
            raise GossipmedError(f"{self.name}: secure aggregation is off")
        work = self._require_work(round)
        return work.state if work.trained else None

    def accept_secure(self, round: int, outcome: SecureOutcome) -> None:
        """The outcome of this site's own secure exchange of `round`, mixed by
        complete_round (a sum, or the reason there is none)."""
        work = self._require_work(round)
        if not self.secure:
            raise GossipmedError(f"{self.name}: secure aggregation is off")
        if outcome.result is not None and (
            outcome.result.instance.receiver != self.name or outcome.result.instance.round != round
        ):
            raise GossipmedError(f"{self.name}: a secure aggregate of another exchange")
        work.secure = outcome

    # -- phase 4+5: receive and verify, inherited from node.round.peer_inbound -------------

    def mix_step(self, round: int, step: int) -> None:
        """Mix exchange `step` (not the last one) and open exchange `step + 1`."""
        work = self._require_work(round)
        if step != work.step or step >= self.gossip_steps - 1:
            raise GossipmedError(
                f"{self.name}: mix_step({round}, {step}) but exchange {work.step} of "
                f"{self.gossip_steps} is open (the last one is mixed by complete_round)"
            )
        started = self.clock()
        work.state = self._mix_exchange(work, round, step)
        work.seconds += self.clock() - started

    # -- phase 6+7: mix, checkpoint, record -------------------------------------------------

    def complete_round(self, round: int) -> RoundRecord:
        """Mix the updates heard for `round`; a neighbour not heard counts as our own state."""
        if self._work is None or self._work.round != round:
            self._start(round)
            assert self._work is not None
            self._work.state = snapshot(self.learner.get_state())
        work = self._work
        started = self.clock()
        if self.secure:
            mixed = self._mix_secure(work, round)
        else:
            mixed = self._mix_exchange(work, round, work.step)
        self.learner.set_state(mixed)
        work.state_norm = state_norm(mixed)
        ev = self.learner.evaluate() if self._should_evaluate(round) else None
        if self.checkpoint_dir is not None:
            self._checkpoint(round)
        work.seconds += self.clock() - started
        record = work.record(
            site=self.name,
            epsilon=self.epsilon,
            expected=len(self.expected(round)),
            rejected=self._take_rejected(),
            eval_loss=ev.loss if ev else None,
            accuracy=ev.accuracy if ev else None,
            secure=self.secure,
            accuracy_norm=ev.accuracy_norm if ev else None,
            eval_perplexity=ev.perplexity if ev else None,
        )
        self._work = None
        if self.metrics is not None:  # after the checkpoint: a record means a saved round
            self.metrics.write(record)
        return record

    def skip_round(self, round: int) -> RoundRecord:
        """The site was offline for `round`: no training, no mixing; its state stays put."""
        with self._lock:
            self.round = round + 1
            self._inbox.drop_before((self.round, 0))
        self._work = None
        return offline_record(
            round=round,
            site=self.name,
            epsilon=self.epsilon,
            expected=len(self.expected(round)),
            rejected=self._take_rejected(),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _checkpoint(self, round: int) -> None:
        assert self.checkpoint_dir is not None
        with self._lock:  # the replay state moves with every accepted update
            replay = self.sealer.state_dict()
        save_checkpoint(
            self.checkpoint_dir,
            site=self.name,
            round=round,
            epsilon=self.epsilon,
            state=self.learner.get_state(),
            replay_state=replay,
            components=self.components(),
        )

    def _start(self, round: int) -> None:
        if round < self.round:
            raise GossipmedError(f"{self.name}: round {round} is already complete")
        with self._lock:
            self.round = round
            self._work = RoundWork(round=round, state={})
            self._inbox.drop_before((round, 0))

    def _mix_exchange(self, work: RoundWork, round: int, step: int) -> AdapterState:
        """Mix what arrived for one exchange into `work.state`. The exchange closes in the same
        locked step that takes its buffer, so an update that arrives while we mix is refused
        as stale instead of being accepted and then silently dropped."""
        with self._lock:
            buffer = self._inbox.take((round, step))
            if step < self.gossip_steps - 1:
                work.step = step + 1
            else:  # the round's last exchange
                self.round = round + 1
                self._inbox.drop_before((self.round, 0))
        # sender-name order, not arrival order: the float sums are the same however the
        # updates raced in (and on every simulation engine)
        neighbour_states = {n: buffer.states[n] for n in sorted(buffer.states)}
        if step == 0:
            work.local_cd = local_consensus_distance(work.state, neighbour_states.values())
        work.bytes_received += buffer.bytes_received
        work.heard |= set(neighbour_states)
        work.heard_last = frozenset(neighbour_states)
        mixed, scaled = mix_states(
            work.state,
            neighbour_states,
            site=self.name,
            round=round,
            step=step,
            row=self.schedule.row(round, self.name),
            aggregator=self.aggregator,
            bound=self.mix_bound,
            audit=self.audit,
        )
        work.states_mixed += len(neighbour_states)
        work.bound_clipped += len(scaled)
        return mixed

    def _mix_secure(self, work: RoundWork, round: int) -> AdapterState:
        """Mix this round's secure aggregate (node.round.secure_mix.mix_outcome)."""
        with self._lock:
            self.round = round + 1
            self._inbox.drop_before((self.round, 0))
        outcome = work.secure = work.secure or SecureOutcome(skipped="no secure exchange ran")
        work.bytes_sent += outcome.bytes_sent
        work.bytes_received += outcome.bytes_received
        work.seconds += outcome.seconds
        mixed, work.local_cd, contributors, scaled = mix_outcome(
            work.state,
            outcome,
            site=self.name,
            round=round,
            audit=self.audit,
            bound=self.mix_bound,
            bound_norm=self.aggregator.bounds_norm,
        )
        work.states_mixed += 1 if contributors else 0  # the sum is the one "neighbour" seen
        work.bound_clipped += int(scaled)
        work.heard |= contributors
        work.heard_last = frozenset(contributors)
        return mixed

    def _require_work(self, round: int) -> RoundWork:
        if self._work is None or self._work.round != round:
            raise GossipmedError(f"{self.name}: seal_outgoing({round}) before train({round})")
        return self._work

    def _should_evaluate(self, round: int) -> bool:
        last = self.total_rounds is not None and round == self.total_rounds - 1
        return last or (round + 1) % self.eval_every == 0
