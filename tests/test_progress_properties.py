"""Stateful properties of catch-up (issue #20): the inbox and the round driver's jump decisions
under arbitrary interleavings of honest and adversarial messages, with virtual time (trio's
MockClock as the wall clock the claims are timed by).

After every step:
- a refused message changed no state, except that an authentic too-early update of a current
  graph neighbour raised that neighbour's claim (one integer, capped below MAX_ROUND);
- every claim and every jump target is below MAX_ROUND;
- a jump goes only to a round that a majority of the neighbours heard recently claims, and
  by at most MAX_JUMP_ROUNDS.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import networkx as nx
import torch
import trio.testing
from adversary import World, enrol
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.wire.update import MAX_ROUND
from node.net.memory import MemoryNetwork
from node.round.audit import ListAudit
from node.round.driver import RoundDriver
from node.round.inbox import Inbox, Refused
from node.round.peer import Peer
from node.round.progress import FINAL_ROUND, MAX_JUMP_ROUNDS, capped, recent_window_s
from topology.schedule import MixingSchedule

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NEIGHBOURS = ("site-01", "site-02", "site-03")
OUTSIDER = "site-04"  # a member with no edge to site-00
TIMEOUT_S = 10.0
WINDOW_S = recent_window_s(TIMEOUT_S)

rounds = st.one_of(
    st.integers(0, 40),
    st.integers(0, 3 * MAX_JUMP_ROUNDS),
    st.sampled_from([MAX_ROUND, MAX_ROUND - 1, MAX_ROUND - 2, FINAL_ROUND - 5]),
)
hostile_rounds = st.one_of(
    rounds,
    st.sampled_from(
        [-1, -(2**40), MAX_ROUND + 1, 2**63 - 1, 2**64 - 1, -(2**63), "7", 1.5, None, b"\x00"]
    ),
)
senders = st.sampled_from([*NEIGHBOURS, OUTSIDER])
pauses = st.sampled_from([0.0, 1.0, TIMEOUT_S, WINDOW_S / 2, WINDOW_S + 1.0])


def majority_ok(target: int, claims: Mapping[str, tuple[int, float]], now: float) -> bool:
    """At least floor(k/2) + 1 of the k neighbours heard within the window claim >= target."""
    recent = [r for r, t in claims.values() if now - t <= WINDOW_S]
    return sum(1 for r in recent if r >= target) >= len(recent) // 2 + 1


class InboxMachine(RuleBasedStateMachine):
    """The Inbox alone: its admission rules and claim bookkeeping."""

    @initialize()
    def start(self) -> None:
        self.clock = trio.testing.MockClock(rate=0)
        self.inbox = Inbox(max_future_rounds=2, wall_clock=self.clock.current_time)
        self.current = 0
        self.step = 0
        self.claims: dict[str, tuple[int, float]] = {}

    def snapshot(self) -> Any:
        return (
            copy.deepcopy(self.inbox.neighbours),
            {k: sorted(b.states) for k, b in self.inbox._buffers.items()},
        )

    @rule(sender=senders, round=rounds, step=st.integers(0, 2))
    def deliver(self, sender: str, round: int, step: int) -> None:
        before = self.snapshot()
        try:
            self.inbox.check(
                sender=sender,
                exchange=(round, step),
                open_exchange=(self.current, self.step),
                current_round=self.current,
                is_neighbour=sender in NEIGHBOURS,
            )
        except Refused as exc:
            stats, buffers = self.snapshot()
            assert buffers == before[1]
            changed = {n for n in set(stats) | set(before[0]) if stats.get(n) != before[0].get(n)}
            if exc.reason in ("too_early", "stale") and sender in NEIGHBOURS:
                assert changed <= {sender}
                old = self.claims.get(sender, (0, 0.0))[0]
                self.claims[sender] = (max(old, capped(round)), self.clock.current_time())
                assert stats[sender].last_round == self.claims[sender][0]
            else:
                assert not changed, exc.reason
            return
        self.inbox.put(sender=sender, exchange=(round, step), state={}, size=1)
        old = self.claims.get(sender, (0, 0.0))[0]
        self.claims[sender] = (max(old, capped(round)), self.clock.current_time())

    @rule(pause=pauses)
    def wait(self, pause: float) -> None:
        self.clock.jump(pause)

    @rule(by=st.integers(0, 3))
    def open_next(self, by: int) -> None:
        self.current += by
        self.step = 0 if by else min(self.step + 1, 2)
        self.inbox.drop_before((self.current, self.step))

    @invariant()
    def claims_below_max_round(self) -> None:
        if not hasattr(self, "inbox"):
            return
        for stats in self.inbox.neighbours.values():
            assert stats.last_round is None or 0 <= stats.last_round < MAX_ROUND
        assert set(self.inbox.neighbours) <= set(NEIGHBOURS)

    @invariant()
    def quorum_is_a_recent_majority(self) -> None:
        if not hasattr(self, "inbox"):
            return
        got = self.inbox.quorum_round(neighbours=frozenset(NEIGHBOURS), window_s=WINDOW_S)
        now = self.clock.current_time()
        if got is None:
            assert not any(now - t <= WINDOW_S for _r, t in self.claims.values())
            return
        assert majority_ok(got, self.claims, now)
        assert not majority_ok(got + 1, self.claims, now)  # the highest such round


class Still:
    """A learner that never changes (catch-up decisions do not depend on training)."""

    ledger = None

    def get_state(self) -> AdapterState:
        return {"x": torch.zeros(2)}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        pass

    def train_round(self, *, steps: int) -> TrainStats:
        return TrainStats(train_loss=0.0, epsilon=0.0, n_examples=0, steps=steps, seconds=0.0)

    def evaluate(self) -> EvalStats:
        return EvalStats(loss=0.0, accuracy=0.0)

    def state_dict(self) -> None:
        return None


WORLD: World | None = None


def world() -> World:
    """One consortium for every example (key generation is the slow part): site-00 with
    three neighbours, and an outsider with an edge to site-01 only."""
    global WORLD
    if WORLD is None:
        edges = [("site-00", n) for n in NEIGHBOURS] + [("site-01", OUTSIDER)]
        WORLD = enrol(["site-00", *NEIGHBOURS, OUTSIDER], edges=edges)
    return WORLD


class CatchUpMachine(RuleBasedStateMachine):
    """site-00's real Peer and RoundDriver: messages from honest and adversarial members
    (any round, garbage included, non-neighbours included), then the driver's decision."""

    @initialize(rounds_limit=st.sampled_from([0, 0, 50, 10_000]))
    def start(self, rounds_limit: int) -> None:
        w = world()
        self.clock = trio.testing.MockClock(rate=0)
        graph = nx.Graph([(a, b) for a, b in w.roster.edges])
        self.audit = ListAudit()
        self.peer = Peer(
            name="site-00",
            learner=Still(),
            sealer=w.sealer("site-00"),
            schedule=MixingSchedule.from_graphs([graph]),
            local_steps=1,
            audit=self.audit,
            wall_clock=lambda: 1_000_000.0 + self.clock.current_time(),
        )
        self.driver = RoundDriver(
            self.peer, MemoryNetwork().endpoint("site-00"), round_timeout_s=TIMEOUT_S
        )
        self.driver._rounds = rounds_limit
        self.adversaries = {n: w.adversary(n) for n in (*NEIGHBOURS, OUTSIDER)}
        self.claims: dict[str, tuple[int, float]] = {}

    def snapshot(self) -> Any:
        return (
            self.peer.neighbour_stats(),
            {k: sorted(b.states) for k, b in self.peer._inbox._buffers.items()},
            copy.deepcopy(self.peer.sealer.state_dict()),
            self.peer.round,
        )

    @rule(sender=senders, round=hostile_rounds, step=st.integers(0, 1), fresh=st.booleans())
    def deliver(self, sender: str, round: Any, step: int, fresh: bool) -> None:
        """An envelope from a real member's keys; `fresh`: a current time stamp (else an old
        one, which the replay guard refuses)."""
        mallory = self.adversaries[sender]
        data = mallory.envelope(
            to="site-00",
            round=round,
            step=step,
            tensors={"x": torch.ones(2)},
            ts=time.time() if fresh else 0.0,
        )
        before = self.snapshot()
        self.audit.events.clear()
        kept = self.peer.receive(data)
        after = self.snapshot()
        if kept:
            self.claims[sender] = (
                max(self.claims.get(sender, (0, 0.0))[0], capped(round)),
                self.clock.current_time(),
            )
            return
        (event,) = self.audit.events
        assert after[1:] == before[1:], event  # buffers, replay state, round: untouched
        if event["reason"] in ("too_early", "stale") and sender in NEIGHBOURS:
            old = self.claims.get(sender, (0, 0.0))[0]
            self.claims[sender] = (max(old, capped(round)), self.clock.current_time())
            assert after[0][sender].last_round == self.claims[sender][0]
            assert {n: s for n, s in after[0].items() if n != sender} == {
                n: s for n, s in before[0].items() if n != sender
            }
        else:
            assert after[0] == before[0], event

    @rule(sender=senders, offset=st.integers(-1, 4), step=st.integers(0, 1))
    def deliver_near(self, sender: str, offset: int, step: int) -> None:
        """An honest-looking update: fresh, about the site's own round."""
        self.deliver(sender=sender, round=max(0, self.peer.round + offset), step=step, fresh=True)

    @rule(pause=pauses)
    def wait(self, pause: float) -> None:
        self.clock.jump(pause)

    @rule()
    def decide(self) -> None:
        """What the driver's loop does at the start of a round: jump, or not."""
        r = self.peer.round
        target = self.driver._catch_up_target(r)
        if target is None:
            return
        now = self.clock.current_time()
        assert r < target <= r + MAX_JUMP_ROUNDS
        assert target <= FINAL_ROUND < MAX_ROUND
        assert majority_ok(target, self.claims, now)
        if self.driver._rounds:
            assert target < self.driver._rounds
        self.peer.round = target  # the jump (the driver's next round runs there)

    @invariant()
    def claims_below_max_round(self) -> None:
        if hasattr(self, "peer"):
            for stats in self.peer.neighbour_stats().values():
                assert stats.last_round is None or stats.last_round < MAX_ROUND
            assert OUTSIDER not in self.peer.neighbour_stats()


TestInbox = InboxMachine.TestCase
TestInbox.settings = SETTINGS
TestCatchUp = CatchUpMachine.TestCase
TestCatchUp.settings = SETTINGS
