"""One neighbour cannot keep moving a site once its other neighbour is back.

A ring site whose other neighbour is down follows the one it hears (that is how a restarted
site rejoins). While the other neighbour was down, a dishonest one's claim of 2**40 therefore
moved the site ahead, MAX_JUMP_ROUNDS per round. When the honest neighbour came back, its
updates were behind the site, refused as stale, and a stale refusal recorded nothing: the
site never heard it again, the dishonest neighbour stayed a "majority" of one, and the site
went on jumping 4,096 rounds per round, training nothing, for good (observed: 8 of 8 later
rounds untrained, heard from 0 neighbours, the honest one absent from its claims). Real peers
and drivers over the in-memory transport, virtual time; the adversary holds a real key.
"""

from __future__ import annotations

import contextlib
import functools

import networkx as nx
import trio
import trio.testing
from progress_world import build, run_site

from gossipmed.errors import TransportError
from gossipmed.wire.update import MAX_ROUND

DOWN_S = 10.0  # the honest neighbour is down this long (virtual seconds; timeout 1 s)
ROUNDS = 60  # rounds the honest sites run


def test_a_site_stops_following_one_neighbour_when_its_other_neighbour_is_back() -> None:
    # ring site-00 .. site-04: site-00's neighbours are site-01 (mallory) and site-04
    net = build(nx.cycle_graph(5), start={}, adversaries=("site-01",))
    victim, back = net.sites["site-00"], net.sites["site-04"]
    mallory = net.adversaries["site-01"]
    state = victim.peer.learner.get_state()
    jumps: dict[str, int] = {}

    async def claim_forever() -> None:
        for i in range(10**6):
            data = mallory.envelope(to="site-00", round=MAX_ROUND - 10**6 + i, tensors=state)
            with contextlib.suppress(TransportError):  # its endpoint may be closing
                await mallory.send("site-00", data)
            await trio.sleep(0.5)

    async def main() -> None:
        with trio.fail_after(10_000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim_forever)
                nursery.start_soon(run_site, victim)
                for name in ("site-02", "site-03"):
                    nursery.start_soon(functools.partial(run_site, net.sites[name], rounds=ROUNDS))
                await trio.sleep(DOWN_S)
                jumps["while down"] = len(victim.driver.state.skipped)
                nursery.start_soon(functools.partial(run_site, back, rounds=ROUNDS))
                await trio.sleep(5.0)  # it is back and heard
                jumps["back"] = len(victim.driver.state.skipped)
                await trio.sleep(10.0)
                jumps["later"] = len(victim.driver.state.skipped)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert jumps["while down"] >= 1  # by design: one dead neighbour, it follows the live one
    assert jumps["later"] == jumps["back"]  # ...but not once both are heard
    assert "site-04" in victim.peer._inbox.claims()
    assert any(r.trained for r in victim.records[-3:])
