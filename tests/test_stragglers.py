"""One slow site among fast ones, in virtual time (trio's MockClock) over the in-memory network:
the fast sites are not held to the slow one's pace, the slow site's updates are still mixed,
and nothing stale is ever accepted.

A site's training time is injected by a driver whose training step sleeps first (the daemon
runs training in a worker thread, so a slow learner looks exactly like this to the loop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import networkx as nx
import pytest
import trio
import trio.testing

from gossipmed.metrics import RoundRecord
from node.net.memory import MemoryNetwork
from node.round.audit import ListAudit
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import build_sealers
from topology.schedule import MixingSchedule

T = TypeVar("T")
TIMEOUT = 10.0  # round_timeout_s
RUN_S = 60.0  # virtual seconds
WORK_S = 0.2  # every site's training per round


class TimedTraining(RoundDriver):
    """A driver whose site's training takes `train_s` seconds."""

    def __init__(self, *args: Any, train_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_s = train_s

    async def _call(self, fn: Callable[..., T], *args: Any, abandon: bool = False) -> T:
        if fn == self.peer.train:
            await trio.sleep(self.train_s)
        return await super()._call(fn, *args, abandon=abandon)


def triangle() -> tuple[dict[str, Peer], dict[str, ListAudit]]:
    graph = nx.cycle_graph(3)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(
        names,
        mode="envelope",
        edges=[(names[u], names[v]) for u, v in graph.edges],
        topology="ring",
    )
    learners = QuadraticFactory(n_sites=3, seed=0, lr=0.1).site_learners()
    audits = {name: ListAudit() for name in names}
    peers = {
        name: Peer(
            name=name,
            learner=learners[i],
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            audit=audits[name],
        )
        for i, name in enumerate(names)
    }
    return peers, audits


def run_with_straggler(slow_s: float) -> tuple[dict[str, list[RoundRecord]], dict[str, ListAudit]]:
    """site-00 trains `slow_s` more per round than the others; RUN_S virtual seconds."""
    peers, audits = triangle()
    network = MemoryNetwork()
    records: dict[str, list[RoundRecord]] = {n: [] for n in peers}

    async def site(name: str) -> None:
        driver = TimedTraining(
            peers[name],
            network.endpoint(name),
            round_timeout_s=TIMEOUT,
            train_s=WORK_S + (slow_s if name == "site-00" else 0.0),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.pump)
            r = 0
            while True:
                record = await driver.run_round(r)
                records[name].append(record)
                r = record.round + 1

    async def main() -> None:
        with trio.move_on_after(RUN_S):
            async with trio.open_nursery() as nursery:
                for name in peers:
                    nursery.start_soon(site, name)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return records, audits


def accepted_from(audit: ListAudit, sender: str) -> set[int]:
    return {
        e["msg_round"]
        for e in audit.events
        if e["event"] == "accepted" and e.get("sender") == sender
    }


@pytest.mark.parametrize("slow_s", [2.0, 15.0])  # within and beyond the round timeout
def test_a_slow_site_neither_holds_back_its_neighbours_nor_is_left_out(slow_s: float) -> None:
    records, audits = run_with_straggler(slow_s)
    slow_rounds = [r.round for r in records["site-00"]]
    # its own pace: its training, then the neighbours' training of the round it joins
    assert len(slow_rounds) >= RUN_S / (slow_s + 2 * WORK_S) - 1
    for fast in ("site-01", "site-02"):
        done = {r.round for r in records[fast]}
        # not held to the slow site's pace: a round costs a fast site its own training plus
        # at most PatienceSettings.floor_s (1 s) of waiting for the missing slow site
        assert len(done) >= 0.9 * RUN_S / (WORK_S + 1.0)
        # and every round the slow site completed was mixed by this fast site
        mixed = accepted_from(audits[fast], "site-00") & done
        assert set(slow_rounds) <= mixed
        refusals = [
            e
            for e in audits[fast].events
            if e["event"] == "rejected" and e.get("sender") == "site-00"
        ]
        assert refusals == []  # the slow site never offers a round its neighbours closed


def test_without_a_straggler_everyone_waits_for_everyone() -> None:
    records, _ = run_with_straggler(0.0)
    assert all(r.neighbours_heard == 2 for recs in records.values() for r in recs)
    assert len({len(recs) for recs in records.values()}) <= 2  # in step (± the last round)


def test_a_deferred_round_keeps_the_training_and_skips_nothing_it_must_not() -> None:
    """The slow site's records: trained every round it ran, and its rounds only go up."""
    records, _ = run_with_straggler(15.0)
    slow = records["site-00"]
    assert all(r.trained for r in slow)
    rounds = [r.round for r in slow]
    assert rounds == sorted(set(rounds))
    assert rounds[-1] > len(rounds)  # it jumped ahead to its neighbours' rounds
