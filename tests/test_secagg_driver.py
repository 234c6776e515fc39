"""Secure aggregation over the round driver and a real (in-memory) transport: signed frames,
phase deadlines, a contributor lost after sharing its keys (reconstruction), a dead site."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import networkx as nx
import torch
import trio
from nacl.signing import SigningKey

from gossipmed.errors import TransportError
from gossipmed.metrics import RoundRecord
from gossipmed.mixing.secagg import ContributionGuard, FixedPoint
from node.net.memory import MemoryNetwork, MemoryTransport
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.round.secure_frame import MAGIC, SIGNATURE_BYTES
from node.round.secure_session import SecureSession
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import build_sealers
from topology.mixing import mixing_matrix
from topology.schedule import MixingSchedule

TIMEOUT = 10.0  # generous: phases close as soon as every expected party has sent
ROSTER = b"R" * 32
N = 5  # complete graph: every neighbourhood has 4 contributors, threshold 3


def _sites(
    n: int = N,
) -> tuple[dict[str, Peer], dict[str, SecureSession], dict[str, ContributionGuard]]:
    graph = nx.complete_graph(n)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(
        names, mode="plaintext", edges=[(names[u], names[v]) for u, v in graph.edges], topology=""
    )
    learners = QuadraticFactory(n_sites=n, seed=0, lr=0.1).site_learners()
    keys = {name: SigningKey.generate() for name in names}
    public = {name: bytes(k.verify_key) for name, k in keys.items()}
    peers, sessions, guards = {}, {}, {}
    for i, name in enumerate(names):
        peers[name] = Peer(
            name=name,
            learner=learners[i],
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            secure=True,  # and training: a secure exchange needs a freshly trained state
        )
        guards[name] = ContributionGuard()
        sessions[name] = SecureSession(
            name=name,
            signing_key=keys[name],
            sign_keys=public,
            roster_hash=ROSTER,
            schedule=schedule,
            schema={k: tuple(v.shape) for k, v in learners[i].get_state().items()},
            fixed_point=FixedPoint(),
            timeout_s=TIMEOUT,
            guard=guards[name],
        )
    return peers, sessions, guards


class LossyTransport:
    """A MemoryTransport that loses the frames `lose(recipient, kind, round)` picks."""

    def __init__(self, inner: MemoryTransport, lose: Callable[[str, str, int], bool]) -> None:
        self.inner = inner
        self.lose = lose

    @property
    def local_name(self) -> str:
        return self.inner.local_name

    async def send(self, recipient: str, data: bytes) -> None:
        if data.startswith(MAGIC):
            body = data[len(MAGIC) + 1 + data[len(MAGIC)] + SIGNATURE_BYTES :]
            doc = msgpack.unpackb(body)
            if self.lose(recipient, doc["kind"], doc["inst"]["round"]):
                return
        await self.inner.send(recipient, data)

    async def receive_from(self) -> tuple[str, bytes]:
        return await self.inner.receive_from()

    def connected(self, site: str) -> bool:
        return self.inner.connected(site)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _run(
    peers: dict[str, Peer],
    sessions: dict[str, SecureSession],
    transports: dict[str, object],
    *,
    rounds: int,
    timeout: float = TIMEOUT,
) -> dict[str, list[RoundRecord]]:
    records: dict[str, list[RoundRecord]] = {n: [] for n in transports}
    done: dict[str, trio.Event] = {}

    async def site(name: str) -> None:
        driver = RoundDriver(
            peers[name],
            transports[name],  # type: ignore[arg-type]
            round_timeout_s=timeout,
            retry_pause_s=0.05,
            secure=sessions[name],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.pump)
            for r in range(rounds):
                records[name].append(await driver.run_round(r))
            done[name].set()
            for event in done.values():  # keep answering the others' last exchanges
                await event.wait()
            nursery.cancel_scope.cancel()

    async def main() -> None:
        done.update({name: trio.Event() for name in transports})
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for name in transports:
                    nursery.start_soon(site, name)

    trio.run(main)
    return records


def test_secure_rounds_over_the_driver_equal_the_plain_mix() -> None:
    peers, sessions, guards = _sites()
    network = MemoryNetwork()
    transports: dict[str, object] = {n: network.endpoint(n) for n in peers}
    records = _run(peers, sessions, transports, rounds=3)
    assert all(
        rec.secure and rec.secure_contributors == N - 1 and rec.secure_reconstructed == 0
        for recs in records.values()
        for rec in recs
    )
    w = torch.tensor(mixing_matrix(nx.complete_graph(N)), dtype=torch.float64)
    factory = QuadraticFactory(n_sites=N, seed=0, lr=0.1)
    expected, targets = factory.starts.double(), factory.targets.double()
    for _ in range(3):  # one local step, then the weighted mix
        expected = w @ (expected - 0.1 * (expected - targets))
    got = torch.stack([p.learner.get_state()["x"] for p in peers.values()]).double()
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(g.last(r) == (2, 0) for n, g in guards.items() for r in peers if r != n)
    assert all(s.refused == 0 for s in sessions.values())


def test_a_contributor_lost_after_its_shares_is_reconstructed_and_rounds_go_on() -> None:
    """site-04's masked inputs of round 1 are lost: every other site's instance rebuilds its
    pairwise masks from the survivors' shares (the unmask phase's reconstruction) and mixes
    the other three. site-04 is never told it was dropped, so it waits out its round; what
    round 2 then gets depends on timing, but every site completes it."""
    peers, sessions, _guards = _sites()
    network = MemoryNetwork()
    transports: dict[str, object] = {n: network.endpoint(n) for n in peers}
    victim = "site-04"
    transports[victim] = LossyTransport(
        transports[victim],  # type: ignore[arg-type]
        lambda _to, kind, round: kind == "masked" and round == 1,
    )
    records = _run(peers, sessions, transports, rounds=3)
    for name, recs in records.items():
        assert [r.round for r in recs] == [0, 1, 2] and all(r.secure for r in recs)
        assert [r.secure_skipped for r in recs[:2]] == [None, None], name
        if name != victim:
            assert [r.secure_contributors for r in recs[:2]] == [4, 3]
            assert [r.secure_reconstructed for r in recs[:2]] == [0, 1]


def test_a_dead_site_does_not_stop_the_others() -> None:
    peers, sessions, _guards = _sites()
    network = MemoryNetwork()
    dead = "site-02"
    alive = {n: network.endpoint(n) for n in peers if n != dead}
    records = _run(peers, sessions, dict(alive), rounds=2, timeout=2.0)
    for recs in records.values():
        assert [r.secure_contributors for r in recs] == [3, 3]
        assert all(r.secure_reconstructed == 0 for r in recs)


def test_frames_that_are_forged_or_from_outsiders_are_refused() -> None:
    peers, sessions, _guards = _sites()
    session = sessions["site-00"]
    session.open(0)
    other = sessions["site-01"]
    other.open(0)
    frames = other.begin(0, peers["site-01"].learner.get_state())
    to_zero = next(data for recipient, data in frames if recipient == "site-00")
    assert session.handle("site-01", to_zero) == []  # kept (the phase is not complete)
    tampered = to_zero[:-1] + bytes([to_zero[-1] ^ 1])
    assert session.handle("site-01", tampered) == [] and session.refused == 1
    assert session.handle("site-02", to_zero) == [] and session.refused == 2  # wrong connection
    assert session.handle("site-01", b"GMSA" + b"\xff" * 10) == [] and session.refused == 3
    huge = b"GMSA" + b"\x00" * (session.limits.max_bytes + 1000)
    assert session.handle("site-01", huge) == [] and session.refused == 4
    far = 2**41  # a member cannot make us jump past the rounds updates may carry
    other.open(far)
    frames = other.begin(far, peers["site-01"].learner.get_state())
    far_frame = next(data for recipient, data in frames if recipient == "site-00")
    assert session.handle("site-01", far_frame) == [] and session.refused == 5
    assert session.furthest_round is None


def test_one_neighbour_cannot_make_a_site_jump_ahead_but_a_threshold_of_them_can() -> None:
    """A dishonest neighbour's signed frame of round 2**40 alone would move the site there,
    write that round into its contribution guard and end its secure aggregation for good
    (found by attacking the integration). The site jumps only to a round that a threshold of
    its neighbours (3 of 4 here) have shown."""
    from gossipmed.wire.update import MAX_ROUND

    peers, sessions, _guards = _sites()
    session = sessions["site-00"]
    session.open(3)

    def frame_from(sender: str, round: int) -> bytes:
        sessions[sender].open(round)
        frames = sessions[sender].begin(round, peers[sender].learner.get_state())
        return next(data for recipient, data in frames if recipient == "site-00")

    assert session.handle("site-01", frame_from("site-01", MAX_ROUND)) == []
    assert session.furthest_round is None
    session.handle("site-02", frame_from("site-02", 9))
    assert session.furthest_round is None  # two neighbours ahead: below the threshold
    session.handle("site-03", frame_from("site-03", 9))
    assert session.furthest_round == 9  # three of four: the honest majority's round


def test_the_driver_refuses_a_session_for_a_plain_peer() -> None:
    peers, sessions, _ = _sites()
    plain = Peer(
        name="site-00",
        learner=peers["site-00"].learner,
        sealer=peers["site-00"].sealer,
        schedule=peers["site-00"].schedule,
        local_steps=1,
    )
    try:
        RoundDriver(plain, MemoryNetwork().endpoint("site-00"), secure=sessions["site-00"])
    except TransportError as exc:
        assert "secure aggregation" in str(exc)
    else:
        raise AssertionError("a plain peer was given a secure session")


def test_a_restarted_site_never_contributes_twice_to_one_instance(tmp_path: object) -> None:
    """The guard is written before the advertisements leave; a session started from the
    written guard (a restart) refuses to contribute to the same round again, and contributes
    to the next one."""
    from pathlib import Path

    from node.daemon.secure import guard_writer, load_guard

    state_dir = Path(str(tmp_path))
    peers, sessions, _ = _sites()
    first = sessions["site-00"]
    written: list[dict[str, object]] = []
    write = guard_writer(state_dir)

    def persist(guard: ContributionGuard) -> None:
        write(guard)
        written.append(guard.state_dict())

    first._persist = persist
    first.open(0)
    adverts = first.begin(0, peers["site-00"].learner.get_state())
    assert len(adverts) == N - 1 and len(written) == 1
    restarted = SecureSession(
        name="site-00",
        signing_key=first._key,
        sign_keys=first.sign_keys,
        roster_hash=ROSTER,
        schedule=first.schedule,
        schema=first.schema,
        fixed_point=FixedPoint(),
        timeout_s=TIMEOUT,
        guard=load_guard(state_dir),
    )
    restarted.open(0)
    assert restarted.begin(0, peers["site-00"].learner.get_state()) == []
    restarted.open(1)
    assert len(restarted.begin(1, peers["site-00"].learner.get_state())) == N - 1


def test_a_secure_site_never_opens_an_individual_update() -> None:
    """With secure aggregation a site holds no neighbour's state: a sealed update (which an
    honest neighbour would never send under this consortium file) is refused unread."""
    peers, _sessions, _ = _sites()
    sender, receiver = peers["site-01"], peers["site-00"]
    plain = Peer(
        name="site-01",
        learner=sender.learner,
        sealer=sender.sealer,
        schedule=sender.schedule,
        local_steps=1,
        train=False,
    )
    sealed = plain.outgoing(0)["site-00"]
    assert receiver.receive(sealed) is False
    assert receiver.rejected == 1 and receiver.heard(0) == set()


def test_the_daemon_names_a_contributor_that_keeps_sending_random_words() -> None:
    """Over the real driver and transport: every honest receiver of a neighbour that masks
    random words (whose sums fail SumOutOfRange) names it within START_AFTER + 2 (n - 1) +
    2 K_TRIALS rounds, by excluding at most one suspect per round, and its last round sums
    the others again."""
    import random

    import numpy as np
    import pytest

    from gossipmed.mixing.secagg import Contributor
    from gossipmed.mixing.secagg.suspects import K_TRIALS, START_AFTER, SuspectSearch

    attacker = "site-03"
    honest = Contributor._on_forwarded

    def forwarded(self: Contributor, msg: object) -> object:
        if self.name == attacker:
            fp = self.config.fixed_point
            raw = np.random.default_rng(5).bytes(self.config.masked_bytes)
            self._encoded = np.frombuffer(raw, dtype=fp.word).astype(fp.word.newbyteorder("="))
        return honest(self, msg)  # type: ignore[arg-type]

    peers, sessions, _ = _sites()
    events: dict[str, list[tuple[str, dict[str, object]]]] = {n: [] for n in sessions}
    for i, (name, session) in enumerate(sessions.items()):
        session._audit = lambda event, _n=name, **fields: events[_n].append((event, fields))
        session.suspects = SuspectSearch(rng=random.Random(i))  # reproducible suspects
    network = MemoryNetwork()
    transports: dict[str, object] = {n: network.endpoint(n) for n in peers}
    bound = START_AFTER + 2 * (N - 2) + 2 * K_TRIALS  # n = N - 1 contributors
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Contributor, "_on_forwarded", forwarded)
        records = _run(peers, sessions, transports, rounds=bound + 1)
    for name in sessions:
        if name == attacker:
            continue
        named = [f for e, f in events[name] if e == "secure_offender_named"]
        assert named and named[0]["offender"] == attacker
        assert int(str(named[0]["round"])) <= bound - 1  # rounds 0 .. bound - 1
        last = records[name][-1]
        assert last.secure_skipped is None and last.secure_contributors == N - 2
