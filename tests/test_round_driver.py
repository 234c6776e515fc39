"""The async round driver over MemoryTransport: full rounds, and a silent site that never
stalls its neighbours beyond the timeout."""

import networkx as nx
import pytest
import torch
import trio
import trio.testing

from gossipmed.choice import default_choice
from gossipmed.errors import TransportError
from gossipmed.metrics import RoundRecord
from gossipmed.mixing.rules import RULES, Aggregator
from node.net.memory import MemoryNetwork
from node.round.driver import RoundDriver, run_round
from node.round.peer import Peer
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import build_sealers
from topology.mixing import mixing_matrix
from topology.schedule import MixingSchedule

TIMEOUT = 10.0  # generous; rounds finish as soon as every neighbour is heard


WEIGHTED = Aggregator(default_choice(RULES, "weighted"))
"""The linear rule x <- W x that these tests specify (the default `bounded` rule also scales
neighbours above the median norm down, so it does not keep the average)."""


def _peers(n: int, *, gossip_steps: int = 1) -> dict[str, Peer]:
    graph = nx.cycle_graph(n)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(
        names,
        mode="envelope",
        edges=[(names[u], names[v]) for u, v in graph.edges],
        topology="ring",
    )
    learners = QuadraticFactory(n_sites=n, seed=0, lr=0.1).site_learners()
    return {
        name: Peer(
            name=name,
            learner=learners[i],
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            gossip_steps=gossip_steps,
            train=False,
            aggregator=WEIGHTED,
        )
        for i, name in enumerate(names)
    }


@pytest.mark.parametrize("gossip_steps", [1, 3])
def test_sites_complete_rounds_together_and_mix(gossip_steps: int) -> None:
    peers = _peers(4, gossip_steps=gossip_steps)
    network = MemoryNetwork()
    transports = {n: network.endpoint(n) for n in peers}
    records: dict[str, list[RoundRecord]] = {n: [] for n in peers}

    async def site(name: str) -> None:
        driver = RoundDriver(peers[name], transports[name])
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.pump)
            for r in range(3):
                records[name].append(await driver.run_round(r, timeout=TIMEOUT))
            nursery.cancel_scope.cancel()

    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for name in peers:
                    nursery.start_soon(site, name)

    trio.run(main)
    assert all(rec.neighbours_heard == 2 for recs in records.values() for rec in recs)
    # mixing with a doubly stochastic W keeps the average exactly
    mean = torch.stack([p.learner.get_state()["x"] for p in peers.values()]).mean(0)
    start = torch.stack(
        [QuadraticFactory(n_sites=4, seed=0, lr=0.1).starts[i] for i in range(4)]
    ).mean(0)
    assert torch.allclose(mean, start, atol=1e-5)
    # and every site holds (W ** gossip_steps) ** 3 applied to the starts
    w = torch.tensor(mixing_matrix(nx.cycle_graph(4)), dtype=torch.float64)
    starts = QuadraticFactory(n_sites=4, seed=0, lr=0.1).starts.double()
    expected = torch.linalg.matrix_power(w, 3 * gossip_steps) @ starts
    got = torch.stack([p.learner.get_state()["x"] for p in peers.values()]).double()
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_silent_neighbour_costs_one_timeout_not_a_hang() -> None:
    peers = _peers(3)
    network = MemoryNetwork()
    a = network.endpoint("site-00")
    network.endpoint("site-01")  # joined, never speaks
    network.endpoint("site-02")

    async def main() -> RoundRecord:
        with trio.fail_after(30):
            return await run_round(peers["site-00"], a, 0, timeout=0.2)

    record = trio.run(main)
    assert record.neighbours_heard == 0 and record.neighbours_expected == 2


def test_a_silent_neighbour_costs_one_timeout_per_round_not_per_exchange() -> None:
    peers = _peers(3, gossip_steps=4)
    network = MemoryNetwork()
    a = network.endpoint("site-00")
    network.endpoint("site-01")
    network.endpoint("site-02")
    clock = trio.testing.MockClock(autojump_threshold=0)  # virtual time: waits are counted

    async def main() -> tuple[RoundRecord, float]:
        start = trio.current_time()
        with trio.fail_after(30):
            record = await run_round(peers["site-00"], a, 0, timeout=5.0)
        return record, trio.current_time() - start

    record, waited = trio.run(main, clock=clock)
    assert record.neighbours_heard == 0
    assert waited == pytest.approx(5.0)  # exchanges 1..3 wait for no one


def test_memory_transport_errors_are_transport_errors() -> None:
    async def main() -> None:
        network = MemoryNetwork(inbox_size=1)
        a = network.endpoint("a")
        network.endpoint("b")
        with pytest.raises(TransportError):
            await a.send("nobody", b"x")
        await a.send("b", b"1")
        with pytest.raises(TransportError):
            await a.send("b", b"2")  # inbox full: dropped, not buffered without bound
        await a.aclose()
        await a.aclose()  # idempotent
        with pytest.raises(TransportError):
            await a.receive()

    trio.run(main)
