"""Stateful properties of one site's secure-aggregation session (issue #20) under arbitrary
interleavings of honest and adversarial frames, with virtual time (trio's MockClock).

site-00 runs a real SecureSession as the receiver of its own instance and a contributor to
each of its 4 neighbours' (site-01..site-04, a complete graph; site-05 is a member adjacent
to site-01..site-03 only, and silent unless adversarial). The neighbours are real honest
sessions exchanging real frames (their instances close phase 0 at its deadline without
site-05);
what they send site-00 waits in a queue that the machine delivers in any order, late or
never. Adversarial frames are sealed with members' real keys (tests/adversary.py): any phase's
message (taken from an honest exchange and re-addressed), any round (current, next, stale,
2**40, 2**40 - 1, 2**40 + 1, 2**63 - 1, negative), from neighbours and from site-05, on the
signer's connection or another's, signed over or bound to another roster hash, and replays of
anything delivered before. Time advances by phase shares and beyond the recent window; rounds
begin with or without a fresh training ticket, site-00 may follow the quorum's claim, begin a
round twice, or restart from its persisted contribution guard. One rule runs a whole honest
round at once (everyone contributes, every queued frame delivered), so that some examples
reach an own sum and site-00's masked input and unmask shares between the other steps.

Checked after every step (what the session's API lets a test observe):
1. a refused frame (the `refused` count rose, with one `secure_frame_refused` audit record)
   changed no state: claims, buffered early frames, the open own instance (round, phase,
   who sent what, running sum, skip reason), each contribution's phase and the contribution
   guard are as before, except the capped claim of the sender when it is a current
   neighbour (a frame of a later round to an instance site-00 does not contribute to is
   refused and still records it); frames that fail authentication, membership or round
   bounds, and stale frames to site-00's own instance, are refused;
2. every claim belongs to a current neighbour, is below MAX_ROUND and no higher than a round
   that neighbour showed in a frame site-00 took; `furthest_round` is None or below MAX_ROUND
   and is the highest round that at least max(floor(k/2) + 1, threshold) of the k
   neighbours heard within the recent window claim;
3. site-00 advertises at most once to any instance (across restarts), only in a round it
   holds a fresh training ticket for, sends masked input only to instances it advertised to,
   and gets an own sum only for a round it trained in since the instance opened;
4. nothing raises out of `handle`, `open`, `begin`, `tick` or `outcome`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import msgpack
import networkx as nx
import torch
import trio.testing
from adversary import World, enrol
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gossipmed.mixing.secagg import (
    AdvertiseKeys,
    ContributionGuard,
    FixedPoint,
    MaskedInput,
    decode_message,
)
from gossipmed.mixing.secagg.params import threshold_for
from gossipmed.wire.update import MAX_ROUND
from node.round.progress import FINAL_ROUND, MAX_JUMP_ROUNDS, capped, recent_window_s
from node.round.secure_frame import MAGIC, SIGNATURE_BYTES, open_frame
from node.round.secure_session import SecureSession
from topology.schedule import MixingSchedule

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SITE = "site-00"
NEIGHBOURS = ("site-01", "site-02", "site-03", "site-04")
OUTSIDER = "site-05"  # a member adjacent to site-01..site-03, not to site-00
HONEST = NEIGHBOURS
MEMBERS = (SITE, *NEIGHBOURS, OUTSIDER)
TIMEOUT_S = 10.0
WINDOW_S = recent_window_s(TIMEOUT_S)
QUORUM = threshold_for(len(NEIGHBOURS))
SCHEMA = {"x": (4,)}
OTHER_ROSTER = b"\x07" * 32
MAX_INBOUND = 40

Outbox = list[tuple[str, bytes]]

pauses = st.sampled_from([0.0, TIMEOUT_S / 5, TIMEOUT_S / 2, TIMEOUT_S, WINDOW_S + 1.0])
# relative to site-00's round (str) or absolute (int)
rounds = st.sampled_from(
    [
        "current",
        "current",
        "next",
        "ahead",
        "stale",
        MAX_ROUND,
        MAX_ROUND - 1,
        MAX_ROUND + 1,
        FINAL_ROUND - 1,
        2**63 - 1,
        -1,
        -(2**40),
        0,
    ]
)


@dataclass
class RawMessage:
    """A message body exactly as given (rounds InstanceId would refuse to build)."""

    body: bytes

    def to_bytes(self) -> bytes:
        return self.body


@dataclass
class Consortium:
    world: World
    schedule: MixingSchedule
    sign_keys: dict[str, bytes]
    templates: dict[str, dict[str, Any]]  # one honest message body per kind


CONSORTIUM: Consortium | None = None


def consortium() -> Consortium:
    """One consortium for every example (key generation and the template exchange are the
    slow part): site-00..site-04 fully connected, site-05 adjacent to site-01..site-03."""
    global CONSORTIUM
    if CONSORTIUM is None:
        edges = [(a, b) for i, a in enumerate(MEMBERS[:5]) for b in MEMBERS[i + 1 : 5]]
        world = enrol(MEMBERS, edges=[*edges, *((n, OUTSIDER) for n in NEIGHBOURS[:3])])
        schedule = MixingSchedule.from_graphs([nx.Graph(world.roster.edges)])
        sign_keys = {n: i.sign_key for n, i in world.identities.items()}
        CONSORTIUM = Consortium(world, schedule, sign_keys, {})
        CONSORTIUM.templates = _record_templates(CONSORTIUM)
    return CONSORTIUM


def _session(c: Consortium, name: str, clock: Any, **kwargs: Any) -> SecureSession:
    return SecureSession(
        name=name,
        signing_key=c.world.identities[name].signing_key,
        sign_keys=c.sign_keys,
        roster_hash=c.world.roster.hash,
        schedule=c.schedule,
        schema=SCHEMA,
        fixed_point=FixedPoint(),
        timeout_s=TIMEOUT_S,
        clock=clock,
        **kwargs,
    )


def _state(name: str) -> dict[str, torch.Tensor]:
    return {"x": torch.full((4,), 0.01 * (1 + MEMBERS.index(name)))}


def _body(data: bytes) -> bytes:
    return data[len(MAGIC) + 1 + data[len(MAGIC)] + SIGNATURE_BYTES :]


def _record_templates(c: Consortium) -> dict[str, dict[str, Any]]:
    """Every kind of message, from one complete honest exchange among all six sessions."""
    clock = trio.testing.MockClock(rate=0)
    sessions = {n: _session(c, n, clock.current_time) for n in MEMBERS}
    templates: dict[str, dict[str, Any]] = {}
    queue: list[tuple[str, str, bytes]] = []
    for s in sessions.values():
        s.open(0)
    for n, s in sessions.items():
        queue += [(n, to, d) for to, d in s.begin(0, _state(n))]
    while queue:
        src, dst, data = queue.pop(0)
        doc = msgpack.unpackb(_body(data), raw=False)
        templates.setdefault(doc["kind"], doc)
        queue += [(dst, to, d) for to, d in sessions[dst].handle(src, data)]
    assert sessions[SITE].outcome(0).result is not None
    return templates


class SecureSessionMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.c = consortium()
        self.clock = trio.testing.MockClock(rate=0)
        self.events: list[dict[str, Any]] = []
        self.persisted: dict[str, Any] | None = None
        self.session = self._site_session()
        self.honest = {n: _session(self.c, n, self.clock.current_time) for n in HONEST}
        self.round = 0  # site-00's open round
        self.honest_round = 0
        self.inbound: list[tuple[str, bytes]] = []  # honest frames to site-00, undelivered
        self.delivered: list[tuple[str, bytes, int | None]] = []  # (connection, frame, round)
        self.shown: dict[str, tuple[int, float]] = {}  # highest round taken, and when
        self.advertised: set[tuple[str, int, int]] = set()
        self.masked: set[tuple[str, int, int]] = set()
        self.trained: set[int] = set()  # rounds with a fresh ticket in this incarnation
        self.begun = False
        self._checked(self.session.open(0))
        self.honest_begun = False
        for s in self.honest.values():
            s.open(0)
        self.neighbours_train(0)

    def _site_session(self) -> SecureSession:
        guard = ContributionGuard()
        if self.persisted is not None:
            guard.load_state_dict(self.persisted)

        def persist(g: ContributionGuard) -> None:
            self.persisted = copy.deepcopy(g.state_dict())

        return _session(
            self.c,
            SITE,
            self.clock.current_time,
            guard=guard,
            persist_guard=persist,
            audit=lambda event, **fields: self.events.append({"event": event, **fields}),
        )

    # -- plumbing -------------------------------------------------------------------------

    def _route(self, src: str, out: Outbox) -> None:
        """Frames among honest sessions are delivered at once; frames to site-00 wait."""
        work = [(src, to, d) for to, d in out]
        while work:
            src, dst, data = work.pop(0)
            if dst == SITE:
                self.inbound = [*self.inbound, (src, data)][-MAX_INBOUND:]
            elif dst in self.honest:  # site-05 is silent: what it would be sent is lost
                work += [(dst, to, d) for to, d in self.honest[dst].handle(src, data)]

    def _checked(self, out: Outbox) -> None:
        """site-00's own frames: property 3, then on to the honest sessions."""
        c = self.c
        for to, data in out:
            _sender, message = open_frame(
                data,
                recipient=to,
                roster_hash=c.world.roster.hash,
                sign_keys=c.sign_keys,
                limits=self.session.limits,
            )
            inst = message.instance
            key = (inst.receiver, inst.round, inst.step)
            if isinstance(message, AdvertiseKeys):
                assert key not in self.advertised, f"second contribution to {key}"
                assert inst.round in self.trained, f"contribution without training: {key}"
                assert self.session.guard.fresh_for(inst.round)
                self.advertised.add(key)
            if isinstance(message, MaskedInput):
                assert key in self.advertised and key not in self.masked, key
                self.masked.add(key)
            event(f"site-00 sent {message.KIND}")
            self._route(SITE, [(to, data)])

    def snapshot(self) -> Any:
        s = self.session
        own = s._own
        agg = None if own is None else own.aggregator
        return (
            {n: (c.round, c.heard_at) for n, c in s._claims.items()},
            {n: list(f) for n, f in s._buffer.items() if f},
            None if own is None else (own.round, own.skipped, own.begun_at, agg is None),
            None
            if agg is None
            else (
                agg.phase,
                {p: sorted(m) for p, m in agg._sent.items()},
                sorted(agg._expected),
                agg._total.tobytes(),
                agg.error,
            ),
            {k: c.phase for k, c in s._contributors.items()},
            s.guard.state_dict(),
            copy.deepcopy(s.guard._fresh),
        )

    def _current(self, token: str | int) -> int:
        return {
            "current": self.round,
            "next": self.round + 1,
            "ahead": self.round + 2 + MAX_JUMP_ROUNDS,
            "stale": self.round - 1,
        }.get(token, token)  # type: ignore[arg-type]

    def deliver(self, via: str, data: bytes, round: int | None, *, must_refuse: bool) -> None:
        """One frame on `via`'s connection: property 1 (and 4: nothing may raise). `round`:
        the round of an authentic frame (signed by `via` under our roster), else None."""
        s = self.session
        before, refused = self.snapshot(), s.refused
        self.events.clear()
        out = s.handle(via, data)
        self.delivered = [*self.delivered, (via, data, round)][-MAX_INBOUND:]
        if via in NEIGHBOURS and round is not None and round >= 0:
            old = self.shown.get(via, (0, 0.0))[0]
            self.shown[via] = (max(old, capped(round)), self.clock.current_time())
        if s.refused == refused:
            assert not must_refuse, f"taken: {via} round {round}"
            assert not [e for e in self.events if e["event"] == "secure_frame_refused"]
            self._checked(out)
            return
        assert s.refused == refused + 1 and out == []
        (refusal,) = self.events
        assert refusal["event"] == "secure_frame_refused" and refusal["reason"]
        event(f"refused: {refusal['reason'][:24]}")
        after = self.snapshot()
        assert after[1:] == before[1:], refusal
        claims_before, claims_after = before[0], after[0]
        for n in set(claims_before) | set(claims_after):
            if claims_before.get(n) != claims_after.get(n):
                assert n == via and via in NEIGHBOURS and round is not None, refusal
                old = claims_before.get(n, (0, 0.0))[0]
                assert claims_after[n][0] == max(old, capped(round)), refusal

    # -- honest traffic -------------------------------------------------------------------

    @rule(
        count=st.sampled_from([1, 3, 64, 64]),
        order=st.sampled_from(["fifo", "fifo", "lifo", "random"]),
    )
    def deliver_honest(self, count: int, order: str) -> None:
        """Up to `count` queued honest frames to site-00, in order, newest first or in a random
        order (what site-00's answers provoke joins the queue; frames skipped stay queued)."""
        for i in range(count):
            if not self.inbound:
                return
            pick = {"fifo": 0, "lifo": -1}.get(order, (i * 7919) % len(self.inbound))
            via, data = self.inbound.pop(pick)
            message = decode_message(_body(data), limits=self.session.limits)
            self.deliver(via, data, message.instance.round, must_refuse=False)

    @rule(order=st.sampled_from(["fifo", "random"]), end=st.booleans())
    def whole_honest_round(self, order: str, end: bool) -> None:
        """Everyone does what an honest round asks at once: the neighbours join site-00's
        round and contribute, site-00 trains (if it has not begun), and every queued frame
        is delivered until none is left; `end`: site-00 then takes its outcome and opens the
        next round."""
        self.neighbours_train(0)
        if not self.begun:
            self.train(True)
        for _ in range(200):  # bounded: each frame is answered at most once per phase
            if not self.inbound:
                break
            self.deliver_honest(64, order)
        if end:
            self.site_opens_next_round(follow=False, skip=1, together=False, fresh=None)

    @rule(by=st.sampled_from([0, 0, 1, 2]))
    def neighbours_train(self, by: int) -> None:
        """The honest sessions contribute in their round, or in site-00's if they are behind
        (by 0), or ahead of site-00 by `by` rounds."""
        target = max(self.honest_round, self.round) + by
        if target != self.honest_round:
            self.honest_round = target
            self.honest_begun = False
            for n, s in self.honest.items():
                self._route(n, s.open(self.honest_round))
        if not self.honest_begun:
            self.honest_begun = True
            for n, s in self.honest.items():
                self._route(n, s.begin(self.honest_round, _state(n)))

    @rule(
        follow=st.booleans(),
        skip=st.integers(1, 2),
        together=st.booleans(),
        fresh=st.sampled_from([None, True, True, False]),
    )
    def site_opens_next_round(
        self, follow: bool, skip: int, together: bool, fresh: bool | None
    ) -> None:
        """site-00 ends its round (its outcome: property 3) and opens a later one: the next,
        a few on, or where the quorum's claim says (a catch-up jump, as the driver bounds
        it); `together`: the neighbours start it too and contribute; `fresh` not None:
        site-00's training step ends at once (else later, by `train`, or never)."""
        self._outcome()
        target = self.round + skip
        ahead = self.session.furthest_round
        if follow and ahead is not None and ahead > self.round:
            target = min(ahead, self.round + MAX_JUMP_ROUNDS, FINAL_ROUND)
        self.round = target
        self.trained, self.begun = set(), False
        self._checked(self.session.open(self.round))
        if together:
            self.neighbours_train(0)
        if fresh is not None:
            self.train(fresh)

    @rule(fresh=st.sampled_from([True, True, False]))
    def train(self, fresh: bool) -> None:
        """site-00's training step ends (fresh) or did not run (no ticket); a second call in
        one round is a retry that must contribute nothing new."""
        if fresh:
            self.trained.add(self.round)
        self.begun = True
        self._checked(self.session.begin(self.round, _state(SITE) if fresh else None))

    @rule()
    def restart(self) -> None:
        """site-00 restarts on its persisted guard and reopens its round (no ticket)."""
        self.session = self._site_session()
        self.trained, self.begun = set(), False
        self._checked(self.session.open(self.round))

    @rule(pause=pauses)
    def wait(self, pause: float) -> None:
        self.clock.jump(pause)
        for n, s in self.honest.items():
            self._route(n, s.tick())
        self._checked(self.session.tick())

    def _outcome(self) -> None:
        if self.session._own is None or self.session._own.round != self.round:
            return
        outcome = self.session.outcome(self.round)
        event(f"own outcome: {'sum' if outcome.result else (outcome.skipped or '')[:24]}")
        if outcome.result is not None:
            assert self.round in self.trained, "a sum without a fresh training ticket"
            assert self.session.guard.fresh_for(self.round)

    # -- adversarial traffic --------------------------------------------------------------

    @rule(
        signer=st.sampled_from([*NEIGHBOURS, OUTSIDER]),
        spoof=st.sampled_from([None, None, None, *NEIGHBOURS]),
        kind=st.sampled_from(
            [
                "advertise",
                "shares",
                "masked",
                "listsig",
                "unmask",
                "keys",
                "forward",
                "survivors",
                "signed",
            ]
        ),
        round=rounds,
        to_signer=st.booleans(),
        roster=st.sampled_from(["ours", "ours", "ours", "signed_other", "bound_other"]),
    )
    def deliver_adversarial(
        self,
        signer: str,
        spoof: str | None,
        kind: str,
        round: str | int,
        to_signer: bool,
        roster: str,
    ) -> None:
        """A frame sealed with `signer`'s real key: an honest message of `kind` re-addressed
        to an instance of `round` (site-00's own, or the signer's when `to_signer`)."""
        c = self.c
        r = self._current(round)
        doc = copy.deepcopy(self.c.templates[kind])
        ours = c.world.roster.hash
        doc["inst"] = {
            "roster": OTHER_ROSTER if roster == "bound_other" else ours,
            "receiver": signer if to_signer else SITE,
            "round": r,
            "step": 0,
        }
        if "sender" in doc:
            doc["sender"] = signer
        message = RawMessage(msgpack.packb(doc, use_bin_type=True))
        data = c.world.adversary(signer).frame(
            message,  # type: ignore[arg-type]
            to=SITE,
            roster_hash=OTHER_ROSTER if roster == "signed_other" else ours,
        )
        via = spoof or signer
        must_refuse = (
            via != signer
            or roster != "ours"
            or signer == OUTSIDER
            or not 0 <= r <= MAX_ROUND
            or (r < self.round and not to_signer)  # a stale contribution may still answer
        )
        authentic = via == signer and roster == "ours"
        self.deliver(via, data, r if authentic else None, must_refuse=must_refuse)

    @rule(pick=st.integers(0, 1000))
    def replay(self, pick: int) -> None:
        """A frame delivered before, again."""
        if self.delivered:
            via, data, round = self.delivered[pick % len(self.delivered)]
            self.deliver(via, data, round, must_refuse=False)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def claims_are_capped_and_shown(self) -> None:
        if not hasattr(self, "session"):
            return
        now = self.clock.current_time()
        for n, claim in self.session._claims.items():
            assert n in NEIGHBOURS, n
            assert 0 <= claim.round <= FINAL_ROUND < MAX_ROUND
            assert n in self.shown and claim.round <= self.shown[n][0], (n, claim)
            assert claim.heard_at <= now

    @invariant()
    def furthest_round_is_a_recent_quorum(self) -> None:
        if not hasattr(self, "session"):
            return
        got = self.session.furthest_round
        now = self.clock.current_time()
        recent = [
            c.round
            for n, c in self.session._claims.items()
            if n in NEIGHBOURS and now - c.heard_at <= WINDOW_S
        ]
        need = max(len(recent) // 2 + 1, QUORUM)
        if got is None:
            assert len(recent) < need or not recent, recent
            return
        assert 0 <= got < MAX_ROUND
        event(f"furthest_round {'= FINAL_ROUND' if got == FINAL_ROUND else 'set'}")
        assert sum(1 for r in recent if r >= got) >= need, (got, recent)
        assert sum(1 for r in recent if r > got) < need, (got, recent)  # the highest such
        shown = [r for n, (r, t) in self.shown.items() if now - t <= WINDOW_S and r >= got]
        assert len(shown) >= QUORUM, (got, self.shown)


TestSecureSession = SecureSessionMachine.TestCase
TestSecureSession.settings = SETTINGS
