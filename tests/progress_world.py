"""Real peers and round drivers over the in-memory transport, for the catch-up tests: any
graph, some sites already far ahead, some dead, one an adversary (tests/adversary.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

import networkx as nx
import trio
import trio.testing
from adversary import Adversary, World, enrol

from gossipmed.metrics import RoundRecord
from node.net.memory import MemoryNetwork
from node.round.audit import ListAudit
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.sim.quadratic import QuadraticFactory
from topology.schedule import MixingSchedule

TIMEOUT_S = 1.0  # virtual seconds (MockClock)


@dataclass
class Site:
    peer: Peer
    driver: RoundDriver
    audit: ListAudit
    records: list[RoundRecord] = field(default_factory=list)


@dataclass
class Net:
    world: World
    sites: dict[str, Site]
    network: MemoryNetwork
    adversaries: dict[str, Adversary]


def build(
    graph: nx.Graph,
    *,
    start: Mapping[str, int],
    dead: Collection[str] = (),
    adversaries: Collection[str] = (),
) -> Net:
    """Sites named site-NN for graph nodes 0..n-1; `start`: rounds sites resume at (0 if
    unnamed); `dead` sites have no endpoint; adversaries have an endpoint and their keys."""
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    world = enrol(names, edges=[(names[u], names[v]) for u, v in graph.edges])
    learners = QuadraticFactory(n_sites=len(names), seed=0, lr=0.1, dim=8).site_learners()
    network = MemoryNetwork()
    sites: dict[str, Site] = {}
    bad: dict[str, Adversary] = {}
    for i, name in enumerate(names):
        if name in dead:
            continue
        transport = network.endpoint(name)
        if name in adversaries:
            bad[name] = world.adversary(name, transport=transport)
            continue
        audit = ListAudit()
        peer = Peer(
            name=name,
            learner=learners[i],
            sealer=world.sealer(name),
            schedule=schedule,
            local_steps=1,
            start_round=start.get(name, 0),
            audit=audit,
        )
        driver = RoundDriver(peer, transport, round_timeout_s=TIMEOUT_S, retry_pause_s=0.1)
        site = Site(peer=peer, driver=driver, audit=audit)
        complete = peer.complete_round

        def recording(round: int, *, site: Site = site, complete=complete) -> RoundRecord:  # type: ignore[no-untyped-def]
            record = complete(round)
            site.records.append(record)
            return record

        peer.complete_round = recording  # type: ignore[method-assign]
        sites[name] = site
    return Net(world=world, sites=sites, network=network, adversaries=bad)


async def run_site(site: Site, *, rounds: int = 0) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(site.driver.pump)
        await site.driver.run(rounds=rounds)
        nursery.cancel_scope.cancel()


def run(
    net: Net,
    *,
    until: Mapping[str, int],
    background: Callable[[], Awaitable[None]] | None = None,
    bound_s: float = 100_000.0,
) -> None:
    """Sites in `until` run `until[name]` rounds and are awaited; the others run until those
    are done (then everything is cancelled). Virtual time (MockClock), bounded."""

    async def main() -> None:
        with trio.fail_after(bound_s):
            async with trio.open_nursery() as others:
                for name, site in net.sites.items():
                    if name not in until:
                        others.start_soon(run_site, site)
                if background is not None:
                    others.start_soon(background)
                async with trio.open_nursery() as awaited:
                    for name, rounds in until.items():
                        awaited.start_soon(
                            lambda s=net.sites[name], r=rounds: run_site(s, rounds=r)
                        )
                others.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
