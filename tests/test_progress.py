"""Progress needs a quorum (issue #20, finding 1): real peers and drivers over the in-memory
transport, virtual time.

A site rejoins after missing 10,000 rounds wherever a majority of the neighbours it hears is
ahead (a ring with one neighbour dead, a star leaf, a 3-regular graph), in jumps of at most
MAX_JUMP_ROUNDS and without training until it has caught up; one neighbour's claim of round
2**40 moves no site with two live neighbours, nor cuts a `rounds = N` run short.
"""

from __future__ import annotations

import networkx as nx
import pytest
import trio
from progress_world import Net, Site, build, run

from gossipmed.errors import WireError
from gossipmed.wire.update import MAX_ROUND
from node.round.progress import MAX_JUMP_ROUNDS

MISSED = 10_000
EXTRA = 3  # rounds the rejoined site runs with its neighbours


def caught_up(site: Site, *, ahead: int) -> None:
    """Jumps are bounded; no round below the neighbours' was trained but the one it resumed
    in (before it had heard anyone); the last rounds were trained with a neighbour."""
    assert site.driver.state.skipped, "the site never jumped"
    for first, last in site.driver.state.skipped:
        assert 0 < last - first + 1 <= MAX_JUMP_ROUNDS
    _resumed, *after = site.records
    trained = [r for r in after if r.trained]
    assert trained and all(r.round >= ahead for r in trained)
    assert all(r.round < ahead for r in after if not r.trained)
    assert any(r.trained and r.neighbours_heard >= 1 for r in site.records[-EXTRA:])
    caught = [e for e in site.audit.events if e["event"] == "catching_up"]
    assert len(caught) == sum(1 for r in after if not r.trained)


@pytest.mark.parametrize(
    ("graph", "victim", "dead"),
    [
        (nx.cycle_graph(5), "site-00", ("site-04",)),  # ring, one neighbour dead
        (nx.star_graph(3), "site-01", ()),  # a leaf: its hub is all it hears
        (nx.circular_ladder_graph(3), "site-00", ()),  # 3-regular, 6 sites
    ],
    ids=["ring-one-dead", "star-leaf", "3-regular"],
)
def test_a_site_rejoins_after_missing_10000_rounds(
    graph: nx.Graph, victim: str, dead: tuple[str, ...]
) -> None:
    names = [f"site-{i:02d}" for i in graph.nodes]
    net = build(graph, start={n: MISSED for n in names if n != victim}, dead=dead)
    final = MISSED + 40  # the others go on meanwhile; the victim must end with them
    run(net, until={victim: final})
    site = net.sites[victim]
    assert site.records[-1].round == final - 1
    caught_up(site, ahead=MISSED)


def attack(net: Net, *, every_s: float = 0.25, rounds: int = 200) -> object:
    """The adversaries claim round 2**40 to each of their neighbours, again and again."""

    async def loop() -> None:
        for _ in range(rounds):
            for mallory in net.adversaries.values():
                edges = mallory.roster.edges
                for to in sorted(
                    {a if b == mallory.name else b for a, b in edges} - {mallory.name}
                ):
                    if to in net.sites:
                        state = net.sites[to].peer.learner.get_state()
                        data = mallory.envelope(to=to, round=MAX_ROUND, tensors=state)
                        await mallory.send(to, data)
            await trio.sleep(every_s)

    return loop


def test_one_neighbour_claiming_2_40_moves_no_site_with_two_live_neighbours() -> None:
    """A 4-ring whose fourth member lies: the two sites next to it hear it and one honest
    neighbour. With `rounds = 6` every honest site still runs all 6 rounds, trained."""
    net = build(nx.cycle_graph(4), start={}, adversaries=("site-03",))
    until = {n: 6 for n in net.sites}
    run(net, until=until, background=attack(net))  # type: ignore[arg-type]
    for name, site in net.sites.items():
        assert site.driver.state.skipped == [], name
        assert [r.round for r in site.records] == list(range(6)), name
        assert all(r.trained for r in site.records), name
        claims = site.peer.neighbour_stats()
        assert all(s.last_round is None or s.last_round < MAX_ROUND for s in claims.values())


def test_a_round_that_fails_on_the_way_to_its_seal_is_audited_and_survived() -> None:
    """Nothing a peer sends ends the daemon: a round whose seal (or mix, or checkpoint)
    raises is given up, audited, and the site goes on with the next one."""
    net = build(nx.cycle_graph(3), start={})
    site = net.sites["site-00"]
    seal = site.peer.seal_outgoing
    failed: list[int] = []

    def seal_once(round: int, step: int = 0) -> dict[str, bytes]:
        if not failed:
            failed.append(round)
            raise WireError("an unsealable state")
        return seal(round, step)

    site.peer.seal_outgoing = seal_once  # type: ignore[method-assign]
    run(net, until={n: 4 for n in net.sites})
    assert failed == [0]
    assert [r.round for r in site.records] == [1, 2, 3]
    (event,) = [e for e in site.audit.events if e["event"] == "round_failed"]
    assert event["round"] == 0 and "unsealable" in event["reason"]


def test_a_message_whose_handling_raises_is_audited_and_survived() -> None:
    net = build(nx.cycle_graph(3), start={})
    site = net.sites["site-00"]
    receive = site.peer.receive
    raised: list[bool] = []

    def receive_once(data: bytes, *, payload_hash: str = "", via: str | None = None) -> bool:
        if not raised:
            raised.append(True)
            raise ValueError("a decoder bug a peer found")
        return receive(data, payload_hash=payload_hash, via=via)

    site.peer.receive = receive_once  # type: ignore[method-assign]
    run(net, until={n: 3 for n in net.sites})
    assert raised and [r.round for r in site.records] == [0, 1, 2]
    assert [e["event"] for e in site.audit.events].count("receive_failed") == 1
